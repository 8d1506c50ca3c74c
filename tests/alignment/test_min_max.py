"""Spec 9.3 item 4 through the whole path (model -> observe_qk -> regularizer -> alignment_loss -> backward).

One plain SGD step on one group of parameters, taken on the loss that a user adds to the task loss, moves the
distance estimate in the direction that group plays in the min-max game: the auxiliary networks improve
their estimate (CT critic raises CT, GAN discriminator lowers its cross-entropy), the navigator lowers CT
(``navigator="min"``) or raises it (``"max"``), and the encoder's query/key projections lower the distance.
"""

import pytest
import torch

from probattn.alignment import alignment_loss, attach_alignment, attached_regularizers

from ._models import tiny_batch, tiny_model

LR = 1e-4


def _setup(variant, layers=2, **options):
    model = tiny_model(layers=layers)
    regularizers = attach_alignment(model, variant, weight=1.0, **options)
    for p in (p for r in regularizers for p in r.parameters()):
        torch.nn.init.normal_(p, std=0.5)  # larger than the default init: first-order effects well above rounding
    x, _ = tiny_batch()
    return model, regularizers, x


def _groups(model, regularizers, axis):
    estimators = [r.estimators[axis] for r in regularizers]
    return {
        "encoder": [p for block in model.blocks for p in (block.in_proj_weight, block.in_proj_bias)],
        "critic": [p for e in estimators if hasattr(e, "critic") for p in e.critic.parameters()],
        "navigator": [p for e in estimators if hasattr(e, "navigator") for p in e.navigator.parameters()],
        "discriminator": [p for e in estimators if hasattr(e, "discriminator") for p in e.discriminator.parameters()],
    }


def _sgd_step(params):
    with torch.no_grad():
        for p in params:
            p -= LR * p.grad


def _term(model, x):
    model(x)
    return alignment_loss(model, distance_batch=0)[0]  # weight 1: the mean term over layers


@pytest.mark.parametrize("axis", ["tokens", "heads"])
@pytest.mark.parametrize(("variant", "options", "part", "direction"), [
    # CT: the term is CT
    ("ct", {"navigator": "min"}, "critic", +1),
    ("ct", {"navigator": "min"}, "navigator", -1),
    ("ct", {"navigator": "min"}, "encoder", -1),
    ("ct", {"navigator": "max"}, "critic", +1),
    ("ct", {"navigator": "max"}, "navigator", +1),
    ("ct", {"navigator": "max"}, "encoder", -1),
    # GAN: the term is 2 ln 2 - BCE, so the discriminator lowering its BCE raises it
    ("gan", {}, "discriminator", +1),
    ("gan", {}, "encoder", -1),
    ("gan", {"symmetric": True}, "encoder", -1),
])
def test_one_sgd_step_of_each_player(axis, variant, options, part, direction):
    model, regularizers, x = _setup(variant, axis=axis, **options)
    before = _term(model, x)
    before.backward()
    _sgd_step(_groups(model, regularizers, axis)[part])
    change = (_term(model, x) - before).item()
    assert change * direction > 1e-9, change


@pytest.mark.parametrize(("symmetric", "query_gets_gradient"), [(False, False), (True, True)])
def test_gan_one_sided_leaves_the_query_projection_alone(symmetric, query_gets_gradient):
    model, _, x = _setup("gan", layers=1, symmetric=symmetric)
    model(x)
    alignment_loss(model, distance_batch=0)[0].backward()
    width = model.blocks[0].embed_dim
    grad = model.blocks[0].in_proj_weight.grad
    assert grad[width:2 * width].abs().sum() > 0  # key rows
    assert (grad[:width].abs().sum() > 0) == query_gets_gradient  # query rows


def test_auxiliary_networks_are_trained_by_the_same_backward_as_the_model():
    model, regularizers, x = _setup("ct")
    model(x)
    alignment_loss(model, distance_batch=0)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for r in attached_regularizers(model)
               for p in r.auxiliary_parameters())
    assert len(regularizers) == 2
