"""The MiniLM token-state cache: a digest checked on read; damaged entries are recomputed and reported."""

from __future__ import annotations

import json

import pytest
import torch

from probattn.hf import states


@pytest.fixture
def fake_minilm(tmp_path, monkeypatch):
    """A cache in tmp_path and a deterministic stand-in for MiniLM (counts its calls)."""
    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(states, "_model_id", lambda: "fake-minilm==1")
    calls = []

    def fake_states(texts, pairs=None, *, max_length, progress=True, **_):
        calls.append(len(texts))
        lengths = torch.tensor([min(len(t.split()) + 2, max_length) for t in texts], dtype=torch.int32)
        rows = int(lengths.sum())
        generator = torch.Generator().manual_seed(0)
        return {"states": torch.randn(rows, states.HIDDEN, generator=generator).to(torch.float16),
                "token_ids": torch.arange(rows, dtype=torch.int32), "lengths": lengths,
                "truncated": torch.tensor(0)}

    monkeypatch.setattr(states, "token_states", fake_states)
    return calls


TEXTS = ["a fine film", "dull", "the best thing this year, by far"]


def _encode(messages):
    store = states.TokenStateStore()
    encoded = store.encode(TEXTS, max_length=16, log=messages.append, progress=False)
    return store.lookup(encoded.input_ids)


def _entry():
    (tensors,) = states.cache_dir().glob("*.safetensors")
    return tensors


def test_a_cached_entry_is_reused_with_its_digest(fake_minilm):
    first = _encode(messages := [])
    assert fake_minilm == [3] and "computing" in messages[0]
    meta = json.loads(_entry().with_suffix(".json").read_text())
    from probattn.io import sha256_file

    assert meta["sha256"] == sha256_file(_entry())
    again = _encode(messages := [])
    assert fake_minilm == [3] and "using cached" in messages[0]
    assert torch.equal(first, again)


def test_flipped_bits_are_recomputed_and_reported(fake_minilm):
    first = _encode([])
    entry = _entry()
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0x40  # one flipped bit inside the float16 states: still a valid safetensors file
    entry.write_bytes(bytes(data))
    second = _encode(messages := [])
    assert fake_minilm == [3, 3]  # recomputed, not used
    assert any(f"{entry} are damaged (sha256" in m and "recomputing" in m for m in messages), messages
    assert torch.equal(first, second)
    assert _encode([]) is not None and fake_minilm == [3, 3]  # the rewritten entry is good again


def test_an_entry_of_an_older_probattn_without_a_digest_is_recomputed_and_called_older(fake_minilm):
    _encode([])
    meta_file = _entry().with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    del meta["sha256"]
    meta_file.write_text(json.dumps(meta))
    _encode(messages := [])
    assert fake_minilm == [3, 3]
    assert any("were written by an older probattn (no sha256" in m and "recomputing" in m for m in messages), messages
    assert not any("damaged" in m for m in messages)


def test_a_truncated_entry_is_recomputed_not_a_safetensor_error(fake_minilm):
    _encode([])
    entry = _entry()
    entry.write_bytes(entry.read_bytes()[:100])
    _encode(messages := [])
    assert fake_minilm == [3, 3]
    assert any("damaged" in m and "recomputing" in m for m in messages), messages


def test_an_entry_without_digest_is_not_trusted(fake_minilm):
    _encode([])
    meta_file = _entry().with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    del meta["sha256"]
    meta_file.write_text(json.dumps(meta))  # what probattn 0.2 wrote
    _encode(messages := [])
    assert fake_minilm == [3, 3]
    assert any("no sha256" in m for m in messages), messages
