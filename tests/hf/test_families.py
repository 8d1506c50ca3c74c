"""Every advertised family x {softmax parity, doubly or refusal at convert, alignment step, repulsive step,
save / load}: each cell passes, or refuses at ``convert`` with a message that says why and what to do.

Tiny random configs built in ``conftest.py`` (no downloads); the reference is the model's own ``eager``
attention (transformers' code, not probattn's).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from probattn.alignment import AlignmentRegularizer, alignment_loss
from probattn.hf import attention_modules, convert, load, repulsive_heads

pytestmark = pytest.mark.hf

FAMILIES = ("bert", "roberta", "distilbert", "albert", "electra", "modernbert", "gpt2", "llama", "mistral", "qwen2",
            "gemma", "phi3", "t5", "bart", "whisper", "vit", "deit", "clip")
DECODER_ONLY = ("gpt2", "llama", "mistral", "qwen2", "gemma", "phi3")


def _convert(model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the "needs adaptation" warning has its own test
        return convert(model, **options)


def _forward(zoo, family, model, batch):
    return zoo.outputs(family, batch, model(**batch))


def _bidirectional_layers(family: str, model) -> list[int]:
    """Indices of the layers where a column-normalized scheme is well defined (read from the names, not from
    probattn: encoder self-attention, CLIP's vision tower)."""
    names = [name for name, _ in attention_modules(model)]
    if family in DECODER_ONLY:
        return []
    if family == "clip":
        return [i for i, n in enumerate(names) if n.startswith("vision_model.")]
    if family in ("t5", "bart", "whisper"):
        return [i for i, n in enumerate(names) if n.startswith("encoder.")]
    if family == "modernbert":  # global layers only: the sliding-window layers would leak past their window
        return [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
    return list(range(len(names)))


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_reproduces_eager(zoo, family):
    original = zoo.build(family, attn_implementation="eager")
    converted = _convert(copy.deepcopy(original), normalization="softmax")
    assert converted.config._attn_implementation == "probattn"
    batch = zoo.inputs(family)
    with torch.no_grad():
        want, got = _forward(zoo, family, original, batch), _forward(zoo, family, converted, batch)
    for w, g in zip(want, got, strict=True):
        assert (w - g).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_doubly_runs_or_is_refused_at_convert(zoo, family):
    model = zoo.build(family, initializer_range=0.5)
    allowed = _bidirectional_layers(family, model)
    count = len(attention_modules(model))
    if len(allowed) < count:  # some layer is causal (or a decoder's cross-attention): refused as a whole ...
        with pytest.raises(ValueError, match=r"cannot be used on .*(causal|is_causal=True|sliding window).*softmax"):
            _convert(model, normalization="doubly")
        assert model.config._attn_implementation != "probattn"
        for i in set(range(count)) - set(allowed):  # ... and layer by layer
            with pytest.raises(ValueError, match=r"leak the future|outside its window"):
                _convert(model, normalization="doubly", layers=[i])
    if not allowed:
        return
    reference = copy.deepcopy(model)
    _convert(model, normalization="doubly", layers=allowed)
    batch = zoo.inputs(family)
    with torch.no_grad():
        want, got = _forward(zoo, family, reference, batch), _forward(zoo, family, model, batch)
    assert all(torch.isfinite(g).all() for g in got)
    assert max((w - g).abs().max().item() for w, g in zip(want, got)) > 1e-3  # the attention did change


def _train_step(zoo, family, model, batch):
    model.train()
    loss = sum(h.square().mean() for h in _forward(zoo, family, model, batch))
    if not any(isinstance(m, AlignmentRegularizer) for m in model.modules()):
        loss.backward()
        return None
    term, stats = alignment_loss(model)
    (loss + term).backward()
    return stats


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_step(zoo, family):
    model = _convert(zoo.build(family), normalization="softmax", alignment={"variant": "ct", "weight": 0.5},
                     layers=[0])
    stats = _train_step(zoo, family, model, zoo.inputs(family))
    assert len(stats.terms) >= 1 and all(math.isfinite(float(t)) for t in stats.terms)
    aux = [m for m in model.modules() if isinstance(m, AlignmentRegularizer)]
    assert len(aux) == 1  # ALBERT shares one layer: one regularizer, called once per use
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in aux[0].parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_repulsive_step(zoo, family):
    model = _convert(zoo.build(family), normalization="softmax", repulsive={"method": "svgd", "alpha": 1.0},
                     layers=[0])
    heads = repulsive_heads(model)
    assert heads.module_names == [attention_modules(model)[0][0]]
    _train_step(zoo, family, model, zoo.inputs(family))
    params = [p for s in heads.particle_sets for p in s.params]
    before = [p.grad.clone() for p in params]
    heads.step()
    after = [p.grad for p in params]
    assert all(torch.isfinite(g).all() for g in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the repulsion rewrote the gradients


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load(zoo, family, tmp_path):
    model = zoo.build(family, initializer_range=0.5)
    allowed = _bidirectional_layers(family, model)
    options = ({"normalization": "hybrid", "hybrid_alpha": "learned", "layers": allowed} if allowed
               else {"normalization": "softmax", "layers": [0]})
    _convert(model, alignment="ct", **options)
    with torch.no_grad():  # move every probattn parameter away from its initial value
        for name, p in model.named_parameters():
            if ".probattn_" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    model.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert loaded.config.probattn == model.config.probattn
    want, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    assert sum(".probattn_" in k for k in got) >= 2
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    batch = zoo.inputs(family)
    with torch.no_grad():
        a, b = _forward(zoo, family, model.eval(), batch), _forward(zoo, family, loaded, batch)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("family", ["clip", "t5", "bart"])
def test_plain_from_pretrained_of_a_partial_conversion_refuses_to_run(zoo, family, tmp_path):
    """Towers and stacks with their own config objects still see the saved settings (never silently plain)."""
    import transformers

    model = zoo.build(family)
    _convert(model, normalization="doubly", layers=_bidirectional_layers(family, model))
    model.save_pretrained(tmp_path)
    plain = getattr(transformers, type(model).__name__).from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"load it with probattn\.hf\.load\(path\)"):
        plain(**zoo.inputs(family))
