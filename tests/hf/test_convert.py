"""convert(): errors, recorded settings, regularizer wiring and the save / load round trip."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from probattn.alignment import AlignmentRegularizer, alignment_loss
from probattn.hf import attention_modules, convert, load, repulsive_heads
from probattn.hf.attention import HybridWeight

pytestmark = pytest.mark.hf


def test_unsupported_family_raises_and_changes_nothing(tiny):
    model = tiny.build("deberta-v2", attn_implementation="eager")
    with pytest.raises(ValueError, match=r"deberta-v2.*AttentionInterface.*Supported: BERT"):
        convert(model, normalization="softmax")
    assert model.config._attn_implementation == "eager"
    assert not hasattr(model.config, "probattn")


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_column_normalization_on_a_decoder_raises_at_convert_time(tiny, family, normalization):
    model = tiny.build(family)
    before = model.config._attn_implementation
    with pytest.raises(ValueError, match=rf"{normalization}.*model_type '{family}'.*causal.*softmax"):
        convert(model, normalization=normalization)
    assert model.config._attn_implementation == before
    assert not any(hasattr(m, "probattn_settings") for m in model.modules())


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"normalization": "dubly"}, ValueError, "normalization must be one of"),
        ({"normalization": "softmax", "hybrid_alpha": -0.3}, ValueError, "hybrid_alpha"),
        ({"normalization": "hybrid", "hybrid_alpha": 1.5}, ValueError, "hybrid_alpha"),
        ({"normalization": "hybrid", "hybrid_alpha": "learnt"}, ValueError, "'learned'"),
        ({"sinkhorn_iters": 0}, ValueError, "sinkhorn_iters"),
        ({"layers": [2]}, ValueError, "2 attention layers"),
        ({"layers": ["0"]}, TypeError, "layers must hold ints"),
        ({"alignment": "cta"}, ValueError, "variant"),
        ({"alignment": {"variant": "ct", "weight": -1.0}}, ValueError, "weight"),
        ({"repulsive": "svgdd"}, ValueError, "repulsive must be"),
        ({"repulsive": {"clip": "before"}}, ValueError, "clip"),
        ({"alignment": {"variant": object()}}, TypeError, "alignment"),
    ],
)
def test_bad_options_name_the_argument_and_change_nothing(tiny, options, error, match):
    model = tiny.build("bert", attn_implementation="eager")
    with pytest.raises(error, match=match):
        convert(model, **options)
    assert model.config._attn_implementation == "eager"
    assert not any(hasattr(m, "probattn_settings") for m in model.modules())


def test_score_capping_family_raises():
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        convert(Gemma2Model(config), normalization="softmax")


def test_not_a_hf_model():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        convert(torch.nn.Linear(2, 2))


def test_settings_are_recorded_in_the_config(tiny):
    model = convert(tiny.build("bert"), normalization="hybrid", hybrid_alpha="learned", alignment="mmd",
                    repulsive={"method": "spos", "alpha": 0.1})
    assert model.config.probattn == {
        "normalization": "hybrid", "hybrid_alpha": "learned", "sinkhorn_iters": 3, "alignment": "mmd",
        "repulsive": {"method": "spos", "alpha": 0.1}, "layers": None,
    }
    assert json.loads(model.config.to_json_string())["probattn"] == model.config.probattn
    # converting again replaces everything; a hybrid weight given with another normalization is unused
    convert(model, normalization="doubly", layers=[0], hybrid_alpha=0.3)
    assert model.config.probattn["hybrid_alpha"] is None
    assert not any(isinstance(m, (HybridWeight, AlignmentRegularizer)) for m in model.modules())
    assert [m.probattn_settings.normalization for _, m in attention_modules(model)] == ["doubly", "softmax"]


@pytest.mark.parametrize(("family", "heads", "kv_heads"),
                         [("bert", 4, 4), ("roberta", 4, 4), ("distilbert", 4, 4), ("gpt2", 4, 4),
                          ("llama", 4, 2), ("vit", 4, 4)])
def test_repulsive_heads_find_the_converted_layers(tiny, family, heads, kv_heads):
    model = convert(tiny.build(family), normalization="softmax", repulsive="recommended", layers=[1])
    repulsive = repulsive_heads(model)
    assert repulsive.clip == "after"
    assert len(repulsive.module_names) == 1 and repulsive.module_names[0] == attention_modules(model)[1][0]
    assert sorted(s.num_particles for s in repulsive.particle_sets) == sorted([heads, kv_heads, kv_heads])


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_alignment_term_is_collected_in_training(tiny, family):
    model = convert(tiny.build(family), normalization="softmax", alignment={"variant": "ct", "weight": 0.5})
    assert len([m for m in model.modules() if isinstance(m, AlignmentRegularizer)]) == 2
    model.train()
    ids, mask = tiny.text_batch(family, [6, 4], left=family != "bert")
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    term, stats = alignment_loss(model)
    assert len(stats.terms) == 2 and torch.isfinite(term)
    (out.square().mean() + term).backward()
    aux = next(m for m in model.modules() if isinstance(m, AlignmentRegularizer))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in aux.parameters())


def test_save_load_round_trip_keeps_learned_weights_and_auxiliary_networks(tiny, tmp_path):
    model = convert(tiny.build("bert", initializer_range=0.5), normalization="hybrid", hybrid_alpha="learned",
                    alignment="ct", repulsive="svgd", layers=[0, 1])
    with torch.no_grad():  # move every probattn parameter away from its initial value
        for name, p in model.named_parameters():
            if ".probattn_" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    model.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert loaded.config._attn_implementation == "probattn"
    assert loaded.config.probattn == model.config.probattn
    want = {k: v for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(want)
    assert sum(".probattn_" in k for k in got) > 2
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    ids, mask = tiny.text_batch("bert", [7, 4])
    with torch.no_grad():
        a = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        b = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)


def test_load_refuses_a_directory_not_saved_by_probattn(tiny, tmp_path):
    tiny.build("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not saved from a probattn-converted model"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load(tmp_path / "missing")
