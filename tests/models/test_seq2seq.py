"""Transformer encoder–decoder: learning, decoding, causality, repulsive layout, refused decoder normalizations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from probattn.models import (
    Seq2SeqConfig,
    Seq2SeqTransformer,
    attention_modules,
    collate,
    label_smoothed_loss,
    paper_particle_sets,
)
from probattn.nn import replace_attention
from probattn.repulsive import RepulsiveHeads


def _model(vocab: int = 40, *, layers: tuple[int, int] = (2, 2), dtype=torch.float32, seed: int = 0,
           **options) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = Seq2SeqConfig(vocab_size=vocab, embed_dim=32, num_heads=4, ffn_dim=64, encoder_layers=layers[0],
                           decoder_layers=layers[1], dropout=0.0, **options)
    return Seq2SeqTransformer(config).to(dtype).eval()


def _sources(n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]
    return collate(rows)["src"]


def test_overfits_a_handful_of_verse_pairs():
    pytest.importorskip("tokenizers")
    sacrebleu = pytest.importorskip("sacrebleu")
    from probattn.data.bible import load_bible_sample
    from probattn.data.subword import BOS, EOS, PAD, train_bpe

    sample = load_bible_sample().head(6)
    tokenizer = train_bpe(sample.sources + sample.targets, vocab_size=300, min_frequency=1)
    src, tgt = tokenizer.encode(sample.sources), tokenizer.encode(sample.targets)
    batch = collate(src, tgt, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tokenizer.vocab_size, embed_dim=64, num_heads=4, ffn_dim=128,
                                             encoder_layers=1, decoder_layers=1, dropout=0.0,
                                             normalize_before=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss, _, tokens = label_smoothed_loss(model(batch["src"], batch["tgt_in"]).logits, batch["tgt_out"],
                                              pad_id=PAD, label_smoothing=0.0)
        (loss / tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    hypotheses = tokenizer.decode(model.greedy(batch["src"]))
    assert sacrebleu.corpus_bleu(hypotheses, [sample.targets]).score > 90
    assert tokenizer.decode(model.beam_search(batch["src"], beam=4)) == hypotheses  # a memorized set: same answer


@pytest.mark.parametrize("normalize_before", [False, True])
def test_beam_one_is_greedy(normalize_before):
    model = _model(normalize_before=normalize_before)
    src = _sources(7, 40)
    greedy = model.greedy(src)
    assert greedy == model.beam_search(src, beam=1)
    assert greedy == model.beam_search(src, beam=1, lenpen=0.3)  # one hypothesis: the penalty changes nothing
    assert any(greedy)


def _sequence_logprob(model: Seq2SeqTransformer, src: torch.Tensor, tokens: list[int]) -> float:
    """Independent scorer: one teacher-forced full forward, pad/<s> excluded from the softmax as in decoding."""
    c = model.config
    tgt_in = torch.tensor([[c.bos_id, *tokens]])
    with torch.no_grad():
        logits = model(src, tgt_in).logits[0].double()
    logits[:, [c.pad_id, c.bos_id]] = -math.inf
    logp = F.log_softmax(logits, dim=-1)
    return float(sum(logp[t, tok] for t, tok in enumerate([*tokens, c.eos_id])))


@pytest.mark.parametrize("lenpen", [0.0, 1.0, 2.0])
def test_beam_search_is_exhaustive_search_when_the_beam_holds_every_hypothesis(lenpen):
    # vocabulary: 4 specials + 2 tokens; at most 3 tokens then </s> (max_len_b=4): 15 hypotheses < beam 16
    model = _model(vocab=6, dtype=torch.float64, seed=3)
    for row in ([4, 5, 5], [5], [4, 4, 5, 4, 5]):
        src = collate([row])["src"]
        hypotheses = [list(h) for n in range(4) for h in itertools.product([4, 5], repeat=n)]
        best = max(hypotheses, key=lambda h: _sequence_logprob(model, src, h) / (len(h) + 1) ** lenpen)
        found = model.beam_search(src, beam=16, lenpen=lenpen, max_len_a=0.0, max_len_b=4)[0]
        assert found == best


def test_incremental_greedy_matches_full_forward():
    model = _model(vocab=30, dtype=torch.float64)
    src = _sources(5, 30)
    c = model.config
    for i, tokens in enumerate(model.greedy(src)):
        logits = model(src[i : i + 1], torch.tensor([[c.bos_id, *tokens]])).logits[0]
        logits[:, [c.pad_id, c.bos_id]] = -math.inf
        expected = logits.argmax(-1).tolist()
        assert expected[: len(tokens)] == tokens
        assert len(tokens) == int(1.5 * int((src[i] != c.pad_id).sum()) + 10) - 1 or expected[len(tokens)] == c.eos_id


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "sinkhorn"])
@pytest.mark.parametrize("normalize_before", [False, True])
def test_no_decoder_position_sees_a_future_target_token(normalization, normalize_before):
    model = _model(vocab=50, normalization=normalization, normalize_before=normalize_before, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    src = _sources(3, 50)
    tgt = torch.randint(4, 50, (3, 9), generator=g)
    tgt[2, 6:] = model.config.pad_id  # a padded row too
    base = model(src, tgt).logits
    for t in range(tgt.shape[1] - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = torch.randint(4, 50, changed[:, t + 1 :].shape, generator=g)
        logits = model(src, changed).logits
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(logits[:, t + 1 :], base[:, t + 1 :])  # the perturbation is seen where allowed


def test_encoder_only_normalization():
    model = _model(normalization="doubly")
    kinds = attention_modules(model)
    assert [m.normalization for _, m in kinds["encoder_self"]] == ["doubly", "doubly"]
    assert {m.normalization for _, m in kinds["decoder_self"] + kinds["cross"]} == {"softmax"}
    out = model(_sources(2, 40), torch.randint(4, 40, (2, 5)), return_attention=True)
    assert torch.isfinite(out.logits).all()
    assert [tuple(w.shape[:2]) for w in out.attentions["cross"]] == [(2, 4), (2, 4)]


def test_decoder_column_normalization_is_refused():
    with pytest.raises(ValueError, match=r"decoder_normalization='doubly'.*leaks the future"):
        Seq2SeqConfig(vocab_size=10, decoder_normalization="doubly")
    model = _model()
    src, tgt = _sources(2, 40), torch.randint(4, 40, (2, 5))
    model.decoder.layers[1].cross_attn.configure(normalization="hybrid")  # no causal mask here: the layer checks
    with pytest.raises(ValueError, match=r"decoder cross_attn\.normalization='hybrid'.*leaks the future"):
        model(src, tgt)
    with pytest.raises(ValueError, match=r"decoder cross_attn\.normalization='hybrid'"):
        model.greedy(src)
    replace_attention(model, normalization="sinkhorn")
    with pytest.raises(ValueError, match=r"decoder self_attn\.normalization='sinkhorn'"):
        model(src, tgt)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("embed_dim", 30, "divisible by num_heads"),
    ("normalization", "sparsemax", "normalization must be one of"),
    ("encoder_layers", 0, "encoder_layers must be a positive integer"),
    ("eos_id", 0, "distinct ids"),
])
def test_config_errors(name, value, match):
    with pytest.raises(ValueError, match=match):
        Seq2SeqConfig(vocab_size=10, **{name: value})


def test_bad_inputs_name_the_argument():
    model = _model()
    with pytest.raises(ValueError, match=r"src must be a \(batch, length\) integer tensor"):
        model(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than max_positions"):
        model(torch.ones(1, 300, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="beam must be a positive integer"):
        model.beam_search(_sources(1, 40), beam=0)


def _paper_layout(encoder_layers: int, decoder_layers: int) -> list[str]:
    """Written out from repulsive.md §3.3: Q/K/V of every encoder self-, decoder self- and cross-attention."""
    names = [f"encoder.layers.{i}.self_attn.{r}" for i in range(encoder_layers) for r in "qkv"]
    for i in range(decoder_layers):
        names += [f"decoder.layers.{i}.self_attn.{r}" for r in "qkv"]
        names += [f"decoder.layers.{i}.cross_attn.{r}" for r in "qkv"]
    return names


@pytest.mark.parametrize(("layers", "count"), [((6, 6), 54), ((3, 3), 27), ((2, 1), 12)])
def test_repulsive_particle_sets_are_the_papers_layout(layers, count):
    model = _model(layers=layers)
    heads = RepulsiveHeads.from_preset(model, "fairseq_iwslt")
    names = [s.name for s in heads.particle_sets]
    assert len(names) == count
    assert names == _paper_layout(*layers) == paper_particle_sets(model)
    assert {(s.num_particles, s.size) for s in heads.particle_sets} == {(4, 8 * 32)}  # 4 heads of d_h x E


def test_repulsive_rewrites_once_per_step():
    from probattn.training.seq2seq import attach_repulsive

    model = _model(layers=(1, 1)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    heads = attach_repulsive(model, optimizer, method="spos", beta=1.0)
    batch = collate([[4, 5, 6]], [[7, 8]])
    loss, _, _ = label_smoothed_loss(model(batch["src"], batch["tgt_in"]).logits, batch["tgt_out"], pad_id=0)
    loss.backward()
    before = model.decoder.layers[0].cross_attn.in_proj_weight.grad.clone()
    optimizer.step()
    assert heads.num_steps == 1
    assert not torch.equal(model.decoder.layers[0].cross_attn.in_proj_weight.grad, before)  # rewritten


def test_label_smoothed_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    target = torch.tensor([[4, 5, 0], [6, 1, 2]])
    loss, nll, tokens = label_smoothed_loss(logits, target, pad_id=0, label_smoothing=0.2)
    logp = torch.log_softmax(logits, -1)
    rows = [(b, t) for b in range(2) for t in range(3) if target[b, t] != 0]
    expected_nll = -sum(float(logp[b, t, target[b, t]]) for b, t in rows)
    expected = sum(0.8 * -float(logp[b, t, target[b, t]]) + 0.2 * -float(logp[b, t].mean()) for b, t in rows)
    assert tokens == 5
    assert float(nll) == pytest.approx(expected_nll, rel=1e-6)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_collate_adds_the_special_tokens():
    batch = collate([[5, 6], [7]], [[8], [9, 10]], pad_id=0, bos_id=2, eos_id=3)
    assert batch["src"].tolist() == [[5, 6, 3], [7, 3, 0]]
    assert batch["tgt_in"].tolist() == [[2, 8, 0], [2, 9, 10]]
    assert batch["tgt_out"].tolist() == [[8, 3, 0], [9, 10, 3]]
    with pytest.raises(ValueError, match="targets has 1 rows but sources has 2"):
        collate([[5], [6]], [[7]])
