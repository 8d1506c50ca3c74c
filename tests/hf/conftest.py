"""Tiny random Hugging Face models for the hf tests (each built from its own config object)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

try:
    import transformers
except ImportError:  # the test modules skip themselves with pytest.importorskip("transformers")
    transformers = None

VOCAB = 99
# family -> (config class, model class, config kwargs, pad token id, causal)
FAMILIES = {
    "bert": ("BertConfig", "BertModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=37,
                                             max_position_embeddings=64), 0),
    "roberta": ("RobertaConfig", "RobertaModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=37,
                                                      max_position_embeddings=64, pad_token_id=1), 1),
    "distilbert": ("DistilBertConfig", "DistilBertModel", dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                               hidden_dim=37, max_position_embeddings=64), 0),
    "gpt2": ("GPT2Config", "GPT2Model", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=0, eos_token_id=0), 0),
    "llama": ("LlamaConfig", "LlamaModel", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64), 0),
    "vit": ("ViTConfig", "ViTModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=37), None),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                             num_attention_heads=4, intermediate_size=37), 0),
}
ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "llama")


def build(family: str, seed: int = 0, **overrides):
    """A tiny random model of ``family`` in eval mode, built from a fresh (deep-copied) config."""
    config_name, model_name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**copy.deepcopy({**kwargs, **overrides}))
    return getattr(transformers, model_name)(config).eval()


def text_batch(family: str, lengths: list[int], *, left: bool = False, seed: int = 1):
    """``(input_ids, attention_mask)`` for sequences of ``lengths``, padded (right, or left) to the longest."""
    pad = FAMILIES[family][3]
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens = torch.randint(2, VOCAB, (n,), generator=gen)
        where = slice(width - n, width) if left else slice(0, n)
        ids[b, where], mask[b, where] = tokens, 1
    return ids, mask


def image_batch(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def run(model, family: str, inputs, **kwargs):
    """Forward with either (ids, mask) or pixel values."""
    if family == "vit":
        return model(pixel_values=inputs, **kwargs)
    ids, mask = inputs
    return model(input_ids=ids, attention_mask=mask, **kwargs)


def valid_positions(family: str, inputs, output) -> torch.Tensor:
    """bool ``(B, L)``: the positions whose outputs mean something (real tokens; every ViT patch)."""
    if family == "vit":
        return torch.ones(output.last_hidden_state.shape[:2], dtype=torch.bool)
    return inputs[1].bool()


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The helpers above, for test modules (pytest's importlib mode does not import conftest by name)."""
    return SimpleNamespace(build=build, text_batch=text_batch, image_batch=image_batch, run=run,
                           valid_positions=valid_positions, FAMILIES=FAMILIES, ENCODERS=ENCODERS,
                           DECODERS=DECODERS)


# ---- every advertised family (tests/hf/test_families.py) ----

_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
_DEC = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_SEQ2SEQ = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, decoder_start_token_id=1)
_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)

# family -> (config class, model class, config kwargs, input kind)
# input kinds: "text" (right padding), "causal" (left padding), "seq2seq", "audio", "image", "clip"
SPECS: dict[str, tuple[str, str, dict, str]] = {
    "bert": ("BertConfig", "BertModel", dict(vocab_size=VOCAB, max_position_embeddings=64, **_ENC), "text"),
    "roberta": ("RobertaConfig", "RobertaModel", dict(vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=1,
                                                      **_ENC), "text"),
    "distilbert": ("DistilBertConfig", "DistilBertModel", dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                               hidden_dim=37, max_position_embeddings=64), "text"),
    "albert": ("AlbertConfig", "AlbertModel", dict(vocab_size=VOCAB, embedding_size=16, max_position_embeddings=64,
                                                   **_ENC), "text"),
    "electra": ("ElectraConfig", "ElectraModel", dict(vocab_size=VOCAB, embedding_size=16, max_position_embeddings=64,
                                                      **_ENC), "text"),
    "modernbert": ("ModernBertConfig", "ModernBertModel", dict(vocab_size=VOCAB, max_position_embeddings=64,
                                                               local_attention=4, cls_token_id=1, sep_token_id=2,
                                                               **_SPECIAL, **_ENC), "text"),
    "gpt2": ("GPT2Config", "GPT2Model", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=1, eos_token_id=2), "causal"),
    "llama": ("LlamaConfig", "LlamaModel", _DEC, "causal"),
    "mistral": ("MistralConfig", "MistralModel", _DEC, "causal"),
    "qwen2": ("Qwen2Config", "Qwen2Model", _DEC, "causal"),
    "gemma": ("GemmaConfig", "GemmaModel", dict(head_dim=8, **_DEC), "causal"),
    "phi3": ("Phi3Config", "Phi3Model", _DEC, "causal"),
    "t5": ("T5Config", "T5Model", dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
                                       decoder_start_token_id=0), "seq2seq"),
    "bart": ("BartConfig", "BartModel", dict(max_position_embeddings=64, **_SEQ2SEQ), "seq2seq"),
    "whisper": ("WhisperConfig", "WhisperModel", dict(num_mel_bins=8, max_source_positions=8, max_target_positions=32,
                                                      **_SEQ2SEQ), "audio"),
    "vit": ("ViTConfig", "ViTModel", dict(image_size=16, patch_size=4, num_channels=3, **_ENC), "image"),
    "deit": ("DeiTConfig", "DeiTModel", dict(image_size=16, patch_size=4, num_channels=3, **_ENC), "image"),
    "clip": ("CLIPConfig", "CLIPModel", dict(text_config=dict(vocab_size=VOCAB, max_position_embeddings=64,
                                                              **_SPECIAL, **_ENC),
                                             vision_config=dict(image_size=16, patch_size=4, **_ENC),
                                             projection_dim=16), "clip"),
}


def build_family(family: str, seed: int = 0, **overrides):
    """A tiny random model of ``family`` in eval mode, from a fresh config (so two models never share one)."""
    import transformers

    config_name, model_name, kwargs, _ = SPECS[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**copy.deepcopy({**kwargs, **overrides}))
    return getattr(transformers, model_name)(config).eval()


def _ids(lengths: list[int], *, left: bool, pad: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        where = slice(width - n, width) if left else slice(0, n)
        ids[b, where], mask[b, where] = torch.randint(3, VOCAB, (n,), generator=gen), 1
    return ids, mask


def family_inputs(family: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Keyword inputs of a batch of 2 (the second text padded) for ``family``'s model."""
    kind = SPECS[family][3]
    pad = 1 if family == "roberta" else 0
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 16, 16, generator=gen)
    if kind == "image":
        return {"pixel_values": pixels}
    if kind == "audio":
        dec = _ids([5, 5], left=False, pad=pad, seed=seed + 1)[0]
        return {"input_features": torch.randn(2, 8, 16, generator=gen), "decoder_input_ids": dec}
    ids, mask = _ids([7, 4], left=kind == "causal", pad=pad, seed=seed)
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "seq2seq":
        out["decoder_input_ids"] = _ids([5, 5], left=False, pad=pad, seed=seed + 1)[0]
    if kind == "clip":
        out["pixel_values"] = pixels
    return out


def family_outputs(family: str, batch: dict[str, torch.Tensor], output) -> list[torch.Tensor]:
    """The hidden states that mean something, each ``(N, hidden)``: real tokens only (padding dropped)."""
    kind = SPECS[family][3]
    valid = batch["attention_mask"].bool() if "attention_mask" in batch else None
    if kind == "clip":
        return [output.text_model_output.last_hidden_state[valid],
                output.vision_model_output.last_hidden_state.flatten(0, 1)]
    if kind in ("seq2seq", "audio"):
        enc = output.encoder_last_hidden_state
        enc = enc[valid] if valid is not None else enc.flatten(0, 1)
        return [enc, output.last_hidden_state.flatten(0, 1)]
    hidden = output.last_hidden_state
    return [hidden[valid] if valid is not None else hidden.flatten(0, 1)]


@pytest.fixture
def zoo() -> SimpleNamespace:
    """Every advertised family: ``build(family)``, ``inputs(family)``, ``outputs(family, batch, output)``."""
    return SimpleNamespace(SPECS=SPECS, build=build_family, inputs=family_inputs, outputs=family_outputs)
