"""What ``probattn.hf.pretrained`` refuses before transformers reads a folder or file (the checks of
:mod:`probattn.hf.pretrained`; the MiniLM-based loading tests are in test_pretrained.py): code from a model
folder (``auto_map``), pickled weights, damaged ``config.json`` values and damaged ``.gguf`` files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from probattn.hf import load, load_model
from probattn.hf.pretrained import RemoteCodeError, check_model_folder, load_tokenizer

from .conftest import build

pytestmark = pytest.mark.hf
ROOT = Path(__file__).resolve().parents[2]
EVIL = """from pathlib import Path
Path(__file__).with_name("MARKER").write_text("the folder's code ran")
from transformers import BertConfig, BertModel
class EvilConfig(BertConfig):
    model_type = "evil-custom"
class EvilModel(BertModel):
    config_class = EvilConfig
"""


def _bert_folder(path: Path, **config_changes) -> Path:
    build("bert").save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _evil_folder(path: Path, model_type: str) -> Path:
    _bert_folder(path, model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                        "AutoModel": "evil.EvilModel"})
    (path / "evil.py").write_text(EVIL)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    return path


@pytest.mark.parametrize("model_type", ["bert", "evil-custom"])  # a known family and one only the code defines
def test_a_folder_with_auto_map_is_refused_before_transformers_reads_it(tmp_path, model_type):
    folder = _evil_folder(tmp_path / "evil", model_type)
    for attempt in (lambda: load_model(folder), lambda: load_model(folder, task="classification", num_labels=2),
                    lambda: load(folder)):
        with pytest.raises(RemoteCodeError, match=r"evil: config\.json carries 'auto_map'.*--trust-remote-code"):
            attempt()
    assert not (folder / "MARKER").exists()


def test_a_tokenizer_config_with_auto_map_is_refused(tmp_path):
    folder = _bert_folder(tmp_path / "tok")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    with pytest.raises(RemoteCodeError, match=r"tokenizer_config\.json carries 'auto_map'"):
        load_tokenizer(folder)


def _cli_args(command: str, folder: Path, tmp_path: Path) -> list[str]:
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"a b {i},{i % 2}\n" for i in range(24)))
    lines = tmp_path / "lines.txt"
    lines.write_text("a b\nb a\na a\n")
    return {"diagnose": ["diagnose", str(folder), "--data", str(data), "--output", str(tmp_path / "report")],
            "train": ["train", "--model", str(folder), "--data", str(data), "--text-column", "text",
                      "--label-column", "label", "--max-steps", "1", "--batch-size", "2"],
            "adapt": ["adapt", "--model", str(folder), "--data", str(lines), "--held-out", "1", "--steps", "1"],
            }[command]


def _check_refusal(code: int, out: str, err: str, folder: Path) -> None:
    assert code != 0
    assert "carries 'auto_map'" in err and "--trust-remote-code" in err and str(folder) in err
    assert "[y/N]" not in out + err and "Traceback" not in err
    assert not (folder / "MARKER").exists()


def test_diagnose_refuses_remote_code_with_stdin_closed(tmp_path):
    """A real process with stdin closed: before, transformers asked "[y/N]" (and ran the code on "y")."""
    folder = _evil_folder(tmp_path / "evil", "evil-custom")
    result = subprocess.run([sys.executable, "-m", "probattn", *_cli_args("diagnose", folder, tmp_path)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    _check_refusal(result.returncode, result.stdout, result.stderr, folder)


@pytest.mark.parametrize("command", ["train", "adapt"])
def test_train_and_adapt_refuse_remote_code(tmp_path, capsys, command):
    from probattn.cli import main

    folder = _evil_folder(tmp_path / "evil", "evil-custom")
    code = main(_cli_args(command, folder, tmp_path))  # pytest's stdin cannot be read: no prompt can wait
    captured = capsys.readouterr()
    _check_refusal(code, captured.out, captured.err, folder)


def test_trust_remote_code_is_passed_through(tmp_path, monkeypatch):
    import transformers

    seen = []

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy))
    folder = _evil_folder(tmp_path / "evil", "evil-custom")
    with pytest.raises(RuntimeError, match="stop here"):
        load_model(folder, trust_remote_code=True)
    plain = _bert_folder(tmp_path / "plain")
    with pytest.raises(RuntimeError, match="stop here"):
        load_model(plain)
    assert seen == [True, False]
    assert not (folder / "MARKER").exists()


def test_pickled_weights_without_safetensors_are_refused(tmp_path):
    folder = _bert_folder(tmp_path / "bin")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # the name is what matters
    with pytest.raises(ValueError, match=r"bin/pytorch_model\.bin: pickled PyTorch weights.*safetensors only"):
        load_model(folder)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("sinkhorn_iters", 2.7, r"probattn\.sinkhorn_iters = 2\.7: must be an integer"),
    ("sinkhorn_iters", -1, r"probattn\.sinkhorn_iters = -1: must be an integer in 1\.\.10000"),
    ("sinkhorn_iters", 10**12, r"probattn\.sinkhorn_iters = 1000000000000: must be an integer"),
    ("sinkhorn_iters", "3", r"probattn\.sinkhorn_iters = '3': must be an integer"),
    ("hybrid_alpha", 1.5, r"probattn\.hybrid_alpha = 1\.5: must be a number in \[0, 1\]"),
    ("hybrid_alpha", "half", r"probattn\.hybrid_alpha = 'half'"),
    ("hybrid_alpha", True, r"probattn\.hybrid_alpha = True"),
    ("normalization", "cosine", r"probattn\.normalization = 'cosine'"),
])
def test_bogus_probattn_settings_in_config_json_name_the_file_and_field(tmp_path, field, value, message):
    import transformers

    settings = {"normalization": "sinkhorn", "hybrid_alpha": None, "sinkhorn_iters": 3, "alignment": None,
                "repulsive": None, "layers": None, field: value}
    folder = _bert_folder(tmp_path / "m", probattn=settings, attn_implementation="probattn")
    for attempt in (lambda: load(folder), lambda: load_model(folder), lambda: check_model_folder(folder)):
        with pytest.raises(ValueError, match=r"m/config\.json: field " + message):
            attempt()
    # plain transformers loading (after `import probattn.hf`) must not truncate 2.7 to 2 either
    model = transformers.AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"config\.json of this model \(config\.probattn\): field " + message):
        model(input_ids=__import__("torch").tensor([[2, 3, 4]]))


@pytest.mark.parametrize(("changes", "message"), [
    ({"hidden_size": 10**12}, r"field hidden_size = 1000000000000 is outside 0\.\.2147483647"),
    ({"num_hidden_layers": -3}, r"field num_hidden_layers = -3 is outside"),
    ({"vocab_size": 99.5}, r"field vocab_size = 99\.5 must be an integer"),
    ({"text_config": {"hidden_size": 10**15}}, r"field text_config\.hidden_size = 1000000000000000 is outside"),
    ({"hidden_size": True}, r"field hidden_size = True must be an integer"),
    ({"num_hidden_layers": 10**9}, r"field num_hidden_layers = 1000000000 is above 10000"),
    ({"text_config": {"num_local_experts": 2**31 - 1}}, r"field text_config\.num_local_experts = 2147483647 is above"),
    ({"num_attention_heads": "4"}, r"field num_attention_heads = '4' must be an integer"),
    ({"num_attention_heads": 0}, r"field num_attention_heads = 0: a model needs at least one attention head"),
    ({"hidden_size": 2**20, "intermediate_size": 2**20}, r"describes a model of .* parameters \(.*hidden_size="
                                                         r"1048576.*more than this machine's memory"),
])
def test_huge_or_bad_size_fields_are_refused_before_allocating(tmp_path, changes, message):
    folder = _bert_folder(tmp_path / "big", **changes)
    with pytest.raises(ValueError, match=r"big/config\.json: " + message):
        load_model(folder)


def test_a_config_whose_sizes_disagree_with_the_weights_names_the_folder(tmp_path):
    """A size that fits in memory but not the saved tensors (max_position_embeddings edited): one line naming the
    folder, not transformers' RuntimeError."""
    folder = _bert_folder(tmp_path / "edited", max_position_embeddings=10**5)
    with pytest.raises(ValueError, match=r"edited: the tensors in its safetensors weights do not have the shapes its "
                                         r"config\.json describes"):
        load_model(folder)


def test_damaged_config_json_is_one_clear_line(tmp_path):
    folder = _bert_folder(tmp_path / "deep")
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep/config\.json: JSON nested too deeply"):
        load_model(folder)
    (folder / "config.json").write_text('{"model_type": "bert",')
    with pytest.raises(ValueError, match=r"deep/config\.json: not valid JSON"):
        load_model(folder)


def _gguf(path: Path) -> bytes:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[: len(data) - 10], r"t\.gguf: damaged GGUF file \(truncated or malformed"),
    (lambda data: data[:40], r"t\.gguf: damaged GGUF file"),
    (lambda data: b"GGML" + data[4:], r"t\.gguf: not a GGUF file \(it starts with b'GGML'"),
])
def test_malformed_gguf_files_are_one_clear_line(tmp_path, monkeypatch, damage, message):
    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    good = _gguf(tmp_path / "good.gguf")
    bad = tmp_path / "t.gguf"
    bad.write_bytes(damage(good))
    with pytest.raises(ValueError, match=message):
        load_model(bad)


@pytest.mark.parametrize(("field", "value"), [("layers", [10**20]), ("repulsive", {"kind": "svgd"}),
                                              ("alignment", 7), ("unknown_option", 1)])
def test_settings_convert_cannot_apply_name_the_file(tmp_path, field, value):
    settings = {"normalization": "doubly", "hybrid_alpha": None, "sinkhorn_iters": 3, "alignment": None,
                "repulsive": None, "layers": None, field: value}
    folder = _bert_folder(tmp_path / "m", probattn=settings, attn_implementation="probattn")
    with pytest.raises(ValueError, match=r"m/config\.json: its 'probattn' entry cannot be applied to this model"):
        load(folder)


def _gguf_with_tokenizer(path: Path, *, blocks: int = 1, merges: tuple[bytes, ...] = (b"a b",)) -> Path:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(blocks)
    writer.add_embedding_length(4)
    writer.add_feed_forward_length(8)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_context_length(16)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([b"a", b"b", b"ab", b"d", b"e", b"f", b"g", b"h"])
    writer.add_token_merges(list(merges))
    writer.add_token_types([1] * 8)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("options", "message"), [
    # block_count 10**7 built ten million layers (minutes, then all memory)
    (dict(blocks=10**7), r"t\.gguf: GGUF field llama\.block_count = 10000000 is outside 0\.\.10000"),
    # a merge naming a token that is not in the vocabulary: a bare Exception from tokenizers
    (dict(merges=(b"a zz",)), r"t\.gguf: damaged or unsupported GGUF file \(its tokenizer or model could not be "
                              r"built: .*zz"),
])
def test_hostile_gguf_headers_are_one_clear_line(tmp_path, monkeypatch, options, message):
    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=message):
        load_model(_gguf_with_tokenizer(tmp_path / "t.gguf", **options))


@pytest.mark.parametrize("shard", ["weights-00001.bin", "../elsewhere/model.safetensors"])
def test_a_safetensors_index_naming_another_kind_of_shard_is_refused(tmp_path, shard):
    """The index decides which files transformers opens: a pickled shard was unpickled (raw UnpicklingError)."""
    import torch

    folder = _bert_folder(tmp_path / "m")
    names = list(build("bert").state_dict())
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "weights-00001.bin")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        name: shard for name in names}}))
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: field weight_map names the shard "
                                         r".*not a \.safetensors file"):
        load_model(folder)
