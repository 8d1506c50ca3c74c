import math

import pytest
import torch

from probattn.metrics import attention_entropy


def test_entropy_extremes_and_normalization():
    uniform = torch.full((1, 1, 2, 4), 0.25, dtype=torch.float64)
    assert attention_entropy(uniform)[0, 0, 0].item() == pytest.approx(math.log(4))
    assert attention_entropy(uniform, normalized=True)[0, 0, 0].item() == pytest.approx(1.0)
    onehot = torch.eye(4, dtype=torch.float64)[None, None]
    torch.testing.assert_close(attention_entropy(onehot), torch.zeros(1, 1, 4, dtype=torch.float64))


def test_normalized_entropy_uses_real_keys():
    w = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)[None, None]
    kv = torch.tensor([[True, True, False]])
    assert attention_entropy(w, key_valid=kv, normalized=True).item() == pytest.approx(1.0)
    single = torch.tensor([[1.0, 0.0]], dtype=torch.float64)[None, None]
    assert attention_entropy(single, key_valid=torch.tensor([[True, False]]), normalized=True).item() == 0.0
