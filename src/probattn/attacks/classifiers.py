"""Classifiers an attack can query: ``texts (list of N str) -> (N, C) numpy probabilities``.

* :func:`torch_classifier`: a probattn-trained model and its encoder (:func:`probattn.training.load_trained`);
* :func:`hf_classifier`: a Hugging Face sequence-classification model and its tokenizer;
* :func:`load_classifier`: either, from a folder: a ``probattn train --output`` folder (``model.json`` +
  ``model.safetensors``, digest-checked) or a Hugging Face sequence-classification folder (``config.json``,
  safetensors; nothing is unpickled, no remote code).

A scikit-learn pipeline is already one: ``pipeline.predict_proba``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["LoadedClassifier", "hf_classifier", "load_classifier", "torch_classifier"]

LoadedClassifier = tuple[Callable[[list[str]], np.ndarray], tuple[str, ...], dict[str, Any]]


def torch_classifier(model: torch.nn.Module, encode: Callable[..., Any], *, batch_size: int = 64,
                     device: torch.device | str | None = None) -> Callable[[list[str]], np.ndarray]:
    """Wrap a probattn-trained model (``model(input_ids, attention_mask) -> logits``) and its encoder."""
    from probattn.training.modeling import batch_inputs, forward_logits

    device = torch.device(device) if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def classify(texts: list[str]) -> np.ndarray:
        model.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            encoded = encode(texts[start:start + batch_size], None)
            rows = slice(0, len(encoded.input_ids))
            logits = forward_logits(model, *batch_inputs(encoded, rows, device))
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    return classify


def hf_classifier(model: Any, tokenizer: Any, *, max_length: int = 128, batch_size: int = 64
                  ) -> Callable[[list[str]], np.ndarray]:
    """Wrap a Hugging Face sequence-classification model (its output has ``.logits``) and tokenizer."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def classify(texts: list[str]) -> np.ndarray:
        model.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                        "token_type_ids")}
            out.append(torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    return classify


def load_classifier(path: str | Path, *, max_length: int = 128, device: str = "cpu") -> LoadedClassifier:
    """``(classifier, label names, info)`` from a probattn run folder or a Hugging Face classifier folder."""
    from probattn.training.outputs import MODEL_INFO

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {path}: not a folder (give a `probattn train --output` folder or a "
                                "Hugging Face sequence-classification folder)")
    if (path / MODEL_INFO).is_file():
        from probattn.training.modeling import load_trained

        saved_model = (json.loads((path / MODEL_INFO).read_text()).get("config") or {}).get("model")
        if saved_model == "minilm-states":
            raise ValueError(f"--model {path}: a minilm-states run reads MiniLM states cached on disk per text set; "
                             "attacking it would cache the states of every perturbed text (tens of thousands of "
                             "files), so it is not supported: attack a fine-tuned model (probattn train --model "
                             "minilm, probattn experiment finetune) or a tiny / Hugging Face model")

        model, encoder, labels = load_trained(path)
        model.to(device)
        info = json.loads((path / MODEL_INFO).read_text())
        return torch_classifier(model, encoder, device=device), tuple(labels), {"kind": "probattn",
                                                                                "config": info.get("config")}
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        architectures = config.get("architectures") or []
        if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
            raise ValueError(f"--model {path}: config.json names {architectures or 'no architecture'}; an attack "
                             "needs a sequence-classification model (…ForSequenceClassification)")
        from probattn.hf import load_model

        model, tokenizer = load_model(path, task=None)
        if tokenizer is None:
            raise ValueError(f"--model {path}: the folder holds no tokenizer (tokenizer.json / vocab.txt)")
        model.to(device)
        id2label = getattr(model.config, "id2label", None) or {}
        labels = tuple(str(id2label.get(i, i)) for i in range(model.config.num_labels))
        return hf_classifier(model, tokenizer, max_length=max_length), labels, {"kind": "hf",
                                                                                "architectures": architectures}
    raise FileNotFoundError(f"--model {path}: holds neither {MODEL_INFO} (a probattn train output) nor config.json "
                            "(a Hugging Face model)")
