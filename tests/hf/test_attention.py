"""The registered attention function on tiny random models of every supported family."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")
import transformers
from transformers.masking_utils import sdpa_mask

from probattn.hf import convert, probattn_attention
from probattn.hf.attention import HYBRID_ATTR, SETTINGS_ATTR, HybridWeight, LayerSettings
from probattn.reference import reference_attention

pytestmark = pytest.mark.hf

ALL = ("bert", "roberta", "distilbert", "gpt2", "llama", "vit")
BIDIRECTIONAL = ("bert", "roberta", "distilbert", "vit")


def _inputs(tiny, family: str, padded: bool):
    if family == "vit":
        return tiny.image_batch()
    lengths = [7, 4] if padded else [7, 7]
    return tiny.text_batch(family, lengths, left=family in tiny.DECODERS)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("family", ALL)
def test_softmax_reproduces_the_original_model(tiny, family, padded):
    if family == "vit" and padded:
        pytest.skip("images have no padding")
    original = tiny.build(family, attn_implementation="eager")
    converted = convert(copy.deepcopy(original), normalization="softmax")
    assert converted.config._attn_implementation == "probattn"
    assert original.config._attn_implementation == "eager"
    inputs = _inputs(tiny, family, padded)
    with torch.no_grad():
        want = tiny.run(original, family, inputs, output_attentions=True)
        fast = tiny.run(converted, family, inputs)  # SDPA path
        dense = tiny.run(converted, family, inputs, output_attentions=True)  # weights materialized
    valid = tiny.valid_positions(family, inputs, want)
    for got in (fast, dense):
        diff = (got.last_hidden_state - want.last_hidden_state)[valid].abs().max().item()
        assert diff <= 1e-5
    assert fast.attentions is None
    assert len(dense.attentions) == len(want.attentions) == 2
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    for got_w, want_w in zip(dense.attentions, want.attentions):
        assert got_w.shape == want_w.shape
        assert (got_w - want_w).masked_select(pair).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", BIDIRECTIONAL)
def test_doubly_changes_outputs_and_every_token_gets_attention(tiny, family):
    # a wide initialisation makes the attention far from uniform, so the schemes differ clearly
    original = tiny.build(family, initializer_range=0.5)
    converted = convert(copy.deepcopy(original), normalization="doubly")
    inputs = _inputs(tiny, family, padded=True)
    with torch.no_grad():
        want = tiny.run(original, family, inputs)
        got = tiny.run(converted, family, inputs, output_attentions=True)
    valid = tiny.valid_positions(family, inputs, want)
    assert (got.last_hidden_state - want.last_hidden_state)[valid].abs().max().item() > 1e-3
    n_valid = valid.sum(-1).float()[:, None, None]  # (B, 1, 1)
    for weights in got.attentions:
        assert torch.isfinite(weights).all()
        received = (weights * valid[:, None, :, None]).sum(dim=-2)  # (B, H, Lk): attention each key receives
        key_valid = valid[:, None, :].expand_as(received)
        assert (received * n_valid)[key_valid].min().item() >= 1 - 1e-4  # at least 1/N
        assert received[~key_valid].abs().max().item() == 0 if (~key_valid).any() else True
        rows = weights.sum(-1)[valid[:, None, :].expand_as(received)]
        torch.testing.assert_close(rows, torch.ones_like(rows))


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
@pytest.mark.parametrize("family", ("bert", "roberta", "distilbert"))
def test_padded_batch_equals_each_sequence_alone(tiny, family, normalization):
    model = convert(tiny.build(family, initializer_range=0.5), normalization=normalization)
    ids, mask = tiny.text_batch(family, [7, 4, 2])
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for b, n in enumerate([7, 4, 2]):
            alone = model(input_ids=ids[b:b + 1, :n], attention_mask=mask[b:b + 1, :n]).last_hidden_state
            torch.testing.assert_close(batched[b, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_layers_keep_exact_softmax_elsewhere(tiny):
    original = tiny.build("bert", attn_implementation="eager", initializer_range=0.5)
    converted = convert(copy.deepcopy(original), normalization="doubly", layers=[-1])
    inputs = tiny.text_batch("bert", [7, 5])
    with torch.no_grad():
        want = original(input_ids=inputs[0], attention_mask=inputs[1], output_attentions=True).attentions
        got = converted(input_ids=inputs[0], attention_mask=inputs[1], output_attentions=True).attentions
    valid = inputs[1].bool()
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    assert (got[0] - want[0]).masked_select(pair).abs().max().item() <= 1e-6
    assert (got[1] - want[1]).masked_select(pair).abs().max().item() > 1e-3
    assert converted.config.probattn["layers"] == [1]


class _Attention(torch.nn.Module):
    """Stands in for a Hugging Face attention module (the function reads only these attributes)."""

    def __init__(self, settings: LayerSettings, heads: int, is_causal: bool = False) -> None:
        super().__init__()
        setattr(self, SETTINGS_ATTR, settings)
        self.is_causal = is_causal
        if settings.hybrid_alpha == "learned":
            self.add_module(HYBRID_ATTR, HybridWeight(heads))


@pytest.mark.parametrize(
    "settings",
    [LayerSettings("softmax"), LayerSettings("doubly"), LayerSettings("hybrid", 0.3),
     LayerSettings("hybrid", "learned"), LayerSettings("sinkhorn", sinkhorn_iters=4)],
    ids=lambda s: f"{s.normalization}-{s.hybrid_alpha}",
)
def test_function_matches_the_float64_reference_with_padding_and_gqa(settings):
    gen = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, length, dim = 3, 4, 2, 6, 8
    q = torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, length, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, length, dim, generator=gen, dtype=torch.float64)
    valid = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    mask = sdpa_mask(batch_size=batch, q_length=length, kv_length=length, attention_mask=valid,
                     mask_function=lambda b, h, q_idx, kv_idx: q_idx >= 0)  # bidirectional + padding
    module = _Attention(settings, heads)
    if settings.hybrid_alpha == "learned":
        with torch.no_grad():
            module.probattn_hybrid.logit.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
        alpha = torch.sigmoid(module.probattn_hybrid.logit.detach()).double().view(1, heads, 1, 1)
    else:
        alpha = settings.hybrid_alpha
    out, weights = probattn_attention(module, q, k, v, mask, scaling=0.4, output_attentions=True)
    allowed = (valid[:, None, :, None] & valid[:, None, None, :])
    want_out, want_weights = reference_attention(q, k, v, normalization=settings.normalization, allowed=allowed,
                                                 scale=0.4, hybrid_alpha=alpha,
                                                 sinkhorn_iters=settings.sinkhorn_iters)
    assert out.shape == (batch, length, heads, dim)
    torch.testing.assert_close(out.transpose(1, 2), want_out, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(weights, want_weights, atol=1e-10, rtol=1e-9)


def test_learned_hybrid_weight_gets_gradients(tiny):
    model = convert(tiny.build("bert", initializer_range=0.5), normalization="hybrid", hybrid_alpha="learned")
    ids, mask = tiny.text_batch("bert", [7, 5])
    model(input_ids=ids, attention_mask=mask).last_hidden_state.square().sum().backward()
    logits = [m.logit for m in model.modules() if isinstance(m, HybridWeight)]
    assert len(logits) == 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in logits)
    torch.testing.assert_close(logits[0].detach(), torch.zeros(4))  # sigmoid(0) = 0.5 at the start


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"softcap": 30.0}, "softcap"), ({"s_aux": torch.zeros(4)}, "sinks"),
     ({"cu_seq_lens_q": torch.tensor([0, 5])}, "packed"), ({"sliding_window": 2}, "sliding_window")],
)
def test_unsupported_keywords_raise(kwargs, match):
    q = k = v = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match=match):
        probattn_attention(_Attention(LayerSettings("softmax"), 4), q, k, v, None, **kwargs)


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "sinkhorn"])
def test_position_bias_is_added_per_pair_before_normalizing(normalization):
    """T5 passes a relative-position bias per (query, key) pair: added to the scores, then normalized."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    bias = 2 * torch.randn(1, 4, 5, 5, generator=gen, dtype=torch.float64)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    hf_mask = valid[:, None, None, :].expand(2, 1, 5, 5)  # as sdpa_mask: key columns only
    module = _Attention(LayerSettings(normalization), 4)
    out, weights = probattn_attention(module, q, k, v, hf_mask, scaling=1.0, position_bias=bias,
                                      output_attentions=True)
    allowed = (valid[:, None, :, None] & valid[:, None, None, :]).expand(2, 4, 5, 5)
    want_out, want_w = reference_attention(q, k, v, normalization=normalization, allowed=allowed, bias=bias, scale=1.0)
    real = valid[:, :, None, None].expand(2, 5, 4, 8)
    torch.testing.assert_close(out[real], want_out.transpose(1, 2)[real])
    torch.testing.assert_close(weights[allowed], want_w[allowed])


def test_causal_module_without_mask_stays_causal():
    """transformers passes no mask for an unpadded causal batch: causality comes from module.is_causal."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    module = _Attention(LayerSettings("softmax"), 4, is_causal=True)
    _, weights = probattn_attention(module, q, k, v, None, output_attentions=True)
    assert weights.triu(1).abs().max().item() == 0.0
    doubly = _Attention(LayerSettings("doubly"), 4, is_causal=True)
    with pytest.raises(ValueError, match="causal"):
        probattn_attention(doubly, q, k, v, None)


def test_regularizer_and_probe_see_real_tokens_only(tiny):
    class Probe:
        def __init__(self):
            self.seen = []

        def observe(self, q, k, *, query_valid, key_valid):
            self.seen.append((q.shape, k.shape, query_valid, key_valid))

    for family, left in (("bert", False), ("gpt2", True), ("llama", True)):
        model = convert(tiny.build(family), normalization="softmax")
        probes = []
        for module in model.modules():
            if hasattr(module, SETTINGS_ATTR):
                module.probattn_probe = Probe()
                probes.append(module.probattn_probe)
        ids, mask = tiny.text_batch(family, [6, 3], left=left)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        for probe in probes:
            ((q_shape, k_shape, query_valid, key_valid),) = probe.seen
            assert q_shape[:3] == (2, 4, 6)
            assert k_shape[1] == (2 if family == "llama" else 4)  # grouped keys arrive grouped
            assert torch.equal(query_valid, mask.bool())
            assert torch.equal(key_valid, mask.bool())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_generation_matches_the_original(tiny, family):
    """Left-padded greedy decoding with a KV cache: single-query steps, causal prefill, grouped keys."""
    head = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[family]
    config = tiny.build(family, attn_implementation="eager").config
    lm = getattr(transformers, head)(copy.deepcopy(config)).eval()
    converted = convert(copy.deepcopy(lm), normalization="softmax", alignment="mmd")
    ids, mask = tiny.text_batch(family, [5, 3], left=True)
    options = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                   pad_token_id=0)
    want = lm.generate(input_ids=ids, attention_mask=mask, **options)
    got = converted.generate(input_ids=ids, attention_mask=mask, **options)
    assert torch.equal(want.sequences, got.sequences)
    for a, b in zip(want.logits, got.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- attn_implementation="probattn_*" in from_pretrained ----

def _quiet_convert(model, **options):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return convert(model, **options)


@pytest.mark.parametrize("name", ["probattn", "probattn_doubly", "probattn_hybrid", "probattn_sinkhorn"])
def test_from_pretrained_accepts_the_probattn_names(tiny, tmp_path, name, recwarn, caplog):
    tiny.build("bert", initializer_range=0.5).save_pretrained(tmp_path)
    model = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation=name).eval()
    assert model.config._attn_implementation == name
    normalization = {"probattn": "softmax"}.get(name, name.removeprefix("probattn_"))
    want = _quiet_convert(transformers.AutoModel.from_pretrained(tmp_path).eval(), normalization=normalization)
    ids, mask = tiny.text_batch("bert", [7, 4])
    recwarn.clear()
    caplog.clear()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        ref = want(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert not recwarn.list and not [r for r in caplog.records if r.levelname == "WARNING"]  # no fallback warning
    assert len(got.attentions) == 2
    for a, b in zip(got.attentions, ref.attentions):
        assert torch.equal(a, b)
    if name != "probattn":  # every real key receives at least 1/N of the attention (hybrid 0.5: (1 - 0.5)/N)
        floor = 0.5 if name == "probattn_hybrid" else 1.0
        valid = mask.bool()
        received = (got.attentions[0] * valid[:, None, :, None]).sum(-2)
        assert (received * valid.sum(-1)[:, None, None])[valid[:, None, :].expand_as(received)].min() >= floor - 1e-4


def test_column_normalized_name_on_a_decoder_raises_at_the_first_forward(tiny, tmp_path):
    tiny.build("gpt2").save_pretrained(tmp_path)
    model = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="probattn_doubly")
    ids, mask = tiny.text_batch("gpt2", [5, 3], left=True)
    with pytest.raises(ValueError, match=r"'doubly' on the causal or decoder attention layer GPT2Attention.*convert"):
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("options", [{"normalization": "doubly"}, {"normalization": "hybrid", "hybrid_alpha": 0.3},
                                     {"normalization": "sinkhorn", "sinkhorn_iters": 2}])
def test_saved_conversion_reloads_with_plain_from_pretrained(tiny, tmp_path, options):
    model = _quiet_convert(tiny.build("bert", initializer_range=0.5), **options)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert plain.config._attn_implementation == "probattn"
    assert not any(hasattr(m, SETTINGS_ATTR) for m in plain.modules())  # settings come from config.json
    ids, mask = tiny.text_batch("bert", [7, 4])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(want, got)


@pytest.mark.parametrize("options", [{"normalization": "doubly", "layers": [0]},
                                     {"normalization": "hybrid", "hybrid_alpha": "learned"},
                                     {"normalization": "softmax", "alignment": "ct"}])
def test_saved_conversion_that_needs_load_says_so(tiny, tmp_path, options):
    _quiet_convert(tiny.build("bert"), **options).save_pretrained(tmp_path)
    plain = transformers.AutoModel.from_pretrained(tmp_path)
    ids, mask = tiny.text_batch("bert", [7, 4])
    with pytest.raises(ValueError, match=r"load it with probattn\.hf\.load\(path\)"):
        plain(input_ids=ids, attention_mask=mask)


# ---- torch.compile ----

def _compiled_matches_eager(tiny, normalization: str, backend: str) -> None:
    model = _quiet_convert(tiny.build("bert", initializer_range=0.5), normalization=normalization)
    ids, mask = tiny.text_batch("bert", [7, 4])
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: any graph break raises
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["softmax", "doubly"])
def test_converted_model_traces_as_one_graph(tiny, normalization):
    _compiled_matches_eager(tiny, normalization, backend="eager")  # dynamo tracing only: fast


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid", "sinkhorn"])
def test_converted_model_compiles_with_inductor(tiny, normalization):
    _compiled_matches_eager(tiny, normalization, backend="inductor")


# ---- a model that ran with a probattn name saves what it ran ----

def _fine_tune(model, ids, mask, steps: int = 2) -> None:
    """A few SGD steps on the hidden states' mean square (the weights move away from the saved ones)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean().backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("name", ["probattn", "probattn_doubly", "probattn_hybrid", "probattn_sinkhorn"])
def test_a_model_loaded_by_a_probattn_name_reloads_with_it(tiny, tmp_path, name):
    from probattn.hf import load

    tiny.build("bert", initializer_range=0.5, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).save_pretrained(tmp_path / "pretrained")
    if name == "probattn":  # runs probattn's softmax: nothing changes, nothing to warn about
        model = transformers.AutoModel.from_pretrained(tmp_path / "pretrained", attn_implementation=name)
    else:
        with pytest.warns(UserWarning, match=rf"attn_implementation='{name}' runs .* other outputs"):
            model = transformers.AutoModel.from_pretrained(tmp_path / "pretrained", attn_implementation=name)
    ids, mask = tiny.text_batch("bert", [7, 4])
    _fine_tune(model, ids, mask)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.save_pretrained(tmp_path / "saved")
    for reloaded in (transformers.AutoModel.from_pretrained(tmp_path / "saved"), load(tmp_path / "saved")):
        assert reloaded.config._attn_implementation == "probattn"
        with torch.no_grad():
            after = reloaded.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(before, after)
    # saved again after a plain reload (transformers consumes attn_implementation on load): still the same
    transformers.AutoModel.from_pretrained(tmp_path / "saved").save_pretrained(tmp_path / "again")
    with torch.no_grad():
        again = transformers.AutoModel.from_pretrained(tmp_path / "again").eval()(input_ids=ids, attention_mask=mask)
    assert torch.equal(before, again.last_hidden_state)


def test_trainer_save_model_keeps_the_probattn_name(tiny, tmp_path):
    pytest.importorskip("accelerate")
    tiny.build("bert", initializer_range=0.5).save_pretrained(tmp_path / "pretrained")
    with pytest.warns(UserWarning, match="probattn_sinkhorn"):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            tmp_path / "pretrained", attn_implementation="probattn_sinkhorn", num_labels=2)
    ids, mask = tiny.text_batch("bert", [7, 4])
    data = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(i % 2)} for i in range(2)] * 4
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                          report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(tmp_path / "saved")
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        after = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()(
            input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)


@pytest.mark.slow  # about 25 s of dynamo tracing on a loaded 2-core machine
def test_converted_model_with_ct_alignment_compiles_in_training_with_no_graph_break(tiny):
    from probattn.alignment import alignment_loss

    model = _quiet_convert(tiny.build("bert", initializer_range=0.5, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0), normalization="doubly", alignment="ct")
    model.train()
    ids, mask = tiny.text_batch("bert", [7, 4])
    model(input_ids=ids, attention_mask=mask)
    want, _ = alignment_loss(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    out = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    got, _ = alignment_loss(model)
    torch.testing.assert_close(got, want)
    (out.sum() + got).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "probattn_alignment" in n)


def test_switching_a_converted_model_back_saves_the_new_implementation(tiny, tmp_path):
    model = _quiet_convert(tiny.build("bert", initializer_range=0.5), normalization="doubly")
    model.set_attn_implementation("sdpa")
    model.save_pretrained(tmp_path)
    assert transformers.AutoModel.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
