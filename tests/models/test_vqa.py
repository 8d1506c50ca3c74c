"""MCAN-style VQA network: shapes, padded question tokens, block-complete masks, noise, variants, baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probattn.masks import build_mask_spec, is_block_complete
from probattn.metrics import incoming_mass, min_incoming_mass
from probattn.models.vqa import (
    ATTENTION_TYPES,
    VQABaseline,
    VQAConfig,
    VQATransformer,
    add_feature_noise,
)
from probattn.nn import MultiheadAttention

VOCAB, ANSWERS = 20, 13


def _model(normalization: str = "softmax", *, seed: int = 0, dtype=torch.float32, **options) -> VQATransformer:
    torch.manual_seed(seed)
    config = VQAConfig(vocab_size=VOCAB, num_answers=ANSWERS, embed_dim=16, num_heads=2, ffn_dim=32, grid=4,
                       cnn_channels=8, dropout=0.0, normalization=normalization, **options)
    return VQATransformer(config).to(dtype).eval()


def _batch(seed: int = 1, *, images: int = 3, questions: int = 5):
    """uint8 images, questions of lengths 1..5 (odd, one-token, full), each about one of the images."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (images, 3, 64, 64), generator=g, dtype=torch.uint8)
    lengths = [1, 3, 5, 2, 4][:questions]
    q = torch.zeros(questions, max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        q[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
    index = torch.arange(questions) % images
    return imgs, q, index


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid", "sinkhorn"])
def test_shapes_and_attention_weights(normalization):
    model = _model(normalization)
    imgs, q, index = _batch()
    out = model(imgs, q, index, return_attention=True)
    b, length, h, cells, glimpses = q.shape[0], q.shape[1], 2, 16, 2
    assert out.logits.shape == (b, ANSWERS) and torch.isfinite(out.logits).all()
    expected = {"question_self": (b, h, length, length), "image_self": (b, h, cells, cells),
                "guided": (b, h, cells, length), "question_reduce": (b, h, glimpses, length),
                "image_reduce": (b, h, glimpses, cells)}
    assert set(out.attentions) == set(ATTENTION_TYPES)
    for kind, shape in expected.items():
        layers = 2 if kind in ("question_self", "image_self", "guided") else 1
        assert [tuple(w.shape) for w in out.attentions[kind]] == [shape] * layers
    # padded question tokens receive no attention as keys, in every layer that sees them
    pad = ~out.question_valid
    for kind in ("question_self", "guided", "question_reduce"):
        for w in out.attentions[kind]:
            assert torch.all(w.masked_select(pad[:, None, None, :].expand_as(w)) == 0)
    assert model.attention_modules().keys() == set(ATTENTION_TYPES)


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid", "sinkhorn"])
def test_padded_tokens_do_not_change_the_answer(normalization):
    """What sits at the padded positions (here: a new embedding of the pad id) and extra padding columns leave every
    logit unchanged; making those positions real tokens changes them (so the check can fail)."""
    model = _model(normalization, dtype=torch.float64)
    imgs, q, index = _batch()
    reference = model(imgs.double() / 255, q, index).logits
    perturbed = q.clone()
    perturbed[q == 0] = torch.randint(1, VOCAB, (int((q == 0).sum()),))
    with torch.no_grad():
        model.embed.weight[0].normal_()
    longer = F.pad(q, (0, 3))
    torch.testing.assert_close(model(imgs.double() / 255, q, index).logits, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(imgs.double() / 255, longer, index).logits, reference, rtol=0, atol=1e-12)
    assert not torch.allclose(model(imgs.double() / 255, perturbed, index).logits, reference)  # the test can fail


def test_padding_changes_answer_without_the_mask(monkeypatch):
    """Sanity: the same perturbation changes the logits when the attention modules ignore key_padding_mask."""
    model = _model("softmax", dtype=torch.float64)
    imgs, q, index = _batch()
    original = MultiheadAttention.forward

    def no_mask(self, query, key, value, key_padding_mask=None, **kwargs):
        return original(self, query, key, value, None, **kwargs)

    monkeypatch.setattr(MultiheadAttention, "forward", no_mask)
    reference = model(imgs.double() / 255, q, index).logits
    with torch.no_grad():
        model.embed.weight[0].normal_()
    assert not torch.allclose(model(imgs.double() / 255, q, index).logits, reference)


def test_masks_are_block_complete_and_doubly_bound_holds():
    """Every mask the model gives an attention module is block-complete (padding only), so the column-normalized
    schemes run; and under doubly every real key of the question self-attention gets at least 1/N_q of its fair
    share (the guaranteed bound)."""
    model = _model("doubly", dtype=torch.float64)
    imgs, q, index = _batch()
    seen = []

    def record(module, args, kwargs):
        query, key = args[0], args[1]
        pad = kwargs.get("key_padding_mask")
        spec = build_mask_spec(batch=query.shape[0], heads=module.num_heads, q_len=query.shape[1], k_len=key.shape[1],
                               device=query.device, key_padding_mask=None if pad is None else ~pad,
                               query_padding_mask=None if pad is None or query is not key else ~pad)
        seen.append(spec.allowed is None or is_block_complete(spec.allowed))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()
               if isinstance(m, MultiheadAttention)]
    out = model(imgs.double() / 255, q, index, return_attention=True)
    for handle in handles:
        handle.remove()
    assert len(seen) == 2 * 1 + 2 * 2 + 2 and all(seen)
    valid = out.question_valid
    for w in out.attentions["question_self"]:
        mass = incoming_mass(w, query_valid=valid, key_valid=valid)
        bound = (1.0 / valid.sum(-1).double())[:, None]
        assert torch.all(min_incoming_mass(mass, key_valid=valid) >= bound - 1e-9)


def test_image_index_shares_images_between_questions():
    model = _model()
    imgs, q, index = _batch()
    shared = model(imgs, q, index).logits
    repeated = model(imgs[index], q).logits
    torch.testing.assert_close(shared, repeated)


def test_feature_noise():
    x = torch.zeros(4000, 16)
    assert add_feature_noise(x, 0.0) is x
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = add_feature_noise(x, 2.0, generator=g1), add_feature_noise(x, 2.0, generator=g2)
    assert torch.equal(a, b)  # the same seed gives every model the same corruption
    assert abs(float(a.std()) - 2.0) < 0.03 and abs(float(a.mean())) < 0.03
    with pytest.raises(ValueError, match=r"noise sigma must be a finite number >= 0, got -1\.0"):
        add_feature_noise(x, -1.0)
    model = _model()
    imgs, q, index = _batch()
    features = model.grid_features(imgs)  # noise is relative to the features' spread: each image mean 0, var 1
    torch.testing.assert_close(features.mean((1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.var((1, 2), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    raw = model.cnn(imgs.float() / 255)  # one shift and scale per image: cells keep their relative strength
    mean, var = raw.mean((1, 2), keepdim=True), raw.var((1, 2), unbiased=False, keepdim=True)
    torch.testing.assert_close(features, (raw - mean) / (var + 1e-5).sqrt(), atol=1e-4, rtol=1e-4)
    clean = model(imgs, q, index).logits
    noisy = model(imgs, q, index, noise_std=1.0, noise_generator=torch.Generator().manual_seed(0)).logits
    again = model(imgs, q, index, noise_std=1.0, noise_generator=torch.Generator().manual_seed(0)).logits
    assert not torch.allclose(clean, noisy) and torch.equal(noisy, again)


def test_variants_reach_every_attention_module():
    from probattn.alignment import alignment_loss, attach_alignment
    from probattn.repulsive import RepulsiveHeads

    model = _model()
    modules = [m for m in model.modules() if isinstance(m, MultiheadAttention)]
    assert len(modules) == 3 * 2 + 2  # encoder SA, decoder SA + GA per layer, two reductions
    repulsive = RepulsiveHeads(model, alpha=0.01)
    assert len(repulsive.module_names) == len(modules) and len(repulsive.particle_sets) == 3 * len(modules)
    regularizers = attach_alignment(model, "ct", weight=0.01)
    assert len(regularizers) == len(modules)
    model.train()
    imgs, q, index = _batch()
    model(imgs, q, index)
    loss, stats = alignment_loss(model, distance_batch=0)
    assert len(stats.terms) == len(modules) and loss.requires_grad


def test_baselines():
    imgs, q, index = _batch()
    config = VQAConfig(vocab_size=VOCAB, num_answers=ANSWERS, grid=4, dropout=0.0)
    torch.manual_seed(0)
    question_only = VQABaseline(config, "question").eval()
    other_images = torch.randint(0, 256, imgs.shape, dtype=torch.uint8)
    torch.testing.assert_close(question_only(imgs, q, index).logits, question_only(other_images, q, index).logits)
    both = VQABaseline(config, "image+question").eval()
    assert both(imgs, q, index).logits.shape == (5, ANSWERS)
    assert not torch.allclose(both(imgs, q, index).logits, both(other_images, q, index).logits)
    # bag of words: padding and word order do not matter
    torch.testing.assert_close(both(imgs, F.pad(q, (0, 2)), index).logits, both(imgs, q, index).logits)
    with pytest.raises(ValueError, match="kind must be one of"):
        VQABaseline(config, "image")


def test_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="grid=6 must be image_size=64 divided by a power of two"):
        VQAConfig(vocab_size=VOCAB, num_answers=ANSWERS, grid=6)
    with pytest.raises(ValueError, match="glimpses >= 2"):
        VQAConfig(vocab_size=VOCAB, num_answers=ANSWERS, glimpses=1, normalization="doubly")
    model = _model()
    imgs, q, index = _batch()
    with pytest.raises(ValueError, match="pass image_index"):
        model(imgs, q)
    with pytest.raises(ValueError, match=r"image_index must be \(5,\)"):
        model(imgs, q, index + 3)
    with pytest.raises(ValueError, match="all padding"):
        model(imgs, torch.zeros_like(q), index)
    with pytest.raises(ValueError, match="more than max_question_length=16"):
        model(imgs, torch.ones(5, 17, dtype=torch.long), index)
