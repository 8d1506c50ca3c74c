"""``TrainConfig``: everything one training run depends on, from flags or a YAML/TOML file.

Field names are the ``probattn train`` flag names with underscores (``--hybrid-alpha`` -> ``hybrid_alpha``).
Precedence: dataclass defaults < ``--config FILE`` < flags given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_LR", "RESUME_SAFE_FIELDS", "TrainConfig", "is_hf_directory", "load_config_file"]

MODELS = ("tiny", "minilm", "minilm-states", "self-attentive")  # or a local Hugging Face model directory
NORMALIZATIONS = ("softmax", "doubly", "hybrid", "sinkhorn")
REPULSIVE_METHODS = ("svgd", "spos")

# learning rate used when lr is None: from scratch vs fine-tuning a pretrained encoder
DEFAULT_LR = {"tiny": 3e-3, "self-attentive": 5e-4, "minilm": 5e-5, "minilm-states": 1e-3}

FLOAT_FIELDS = frozenset({"hybrid_alpha", "alignment_weight", "repulsive_alpha", "dropout", "lr", "weight_decay",
                          "max_grad_norm"})

# Fields that may change between a run and its --resume without changing what is computed.
RESUME_SAFE_FIELDS = frozenset({"output", "resume", "overwrite", "checkpoint_every", "ood", "eval_batch_size",
                                "device", "trust_remote_code"})


def is_hf_directory(model: str) -> bool:
    """Whether ``model`` names a local directory holding a Hugging Face model (``config.json``)."""
    return model not in MODELS and (Path(model) / "config.json").is_file()


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``batch_size`` is the global batch of one optimizer step (over ``grad_accum``
    micro-batches and all processes); ``data`` is ``"rotten_tomatoes"`` or a CSV/JSONL/Parquet file."""

    # model and attention
    model: str = "tiny"
    normalization: str = "softmax"
    hybrid_alpha: float = 0.5
    sinkhorn_iters: int = 3
    alignment: str | None = None
    alignment_weight: float = 0.01
    repulsive: str | None = None
    repulsive_alpha: float = 0.01
    repulsive_preset: str | None = None  # a probattn.repulsive.PRESETS name: its alpha, stepsize, layers
    adapt_steps: int = 0  # minilm / HF folder, converted: distil toward the original this many steps first
    embed_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    dropout: float = 0.1
    # data
    data: str = "rotten_tomatoes"
    text_column: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None
    ood: str | None = None
    data_seed: int = 0
    max_train_examples: int | None = None
    max_length: int = 64
    # optimization
    seed: int = 0
    max_steps: int = 200
    batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None  # None: the model's default, DEFAULT_LR
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    eval_batch_size: int = 128
    eval_every: int = 0  # model selection: validation every N steps, best checkpoint kept (0 = off)
    patience: int = 0  # stop after this many validations without improvement (0 = never early)
    # run management
    output: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    # a Hugging Face --model folder whose config names its own Python classes (auto_map) runs them only with this
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag for any value that cannot work."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {what}")

        need(self.model in MODELS or is_hf_directory(self.model), "model",
             f"choose one of {', '.join(MODELS)}, or a local Hugging Face model directory (with config.json)")
        need(self.normalization in NORMALIZATIONS, "normalization", f"choose one of {', '.join(NORMALIZATIONS)}")
        need(0.0 <= self.hybrid_alpha <= 1.0, "hybrid_alpha", "must lie in [0, 1]")
        need(self.sinkhorn_iters >= 1, "sinkhorn_iters", "must be at least 1")
        from probattn.alignment import VARIANTS

        need(self.alignment is None or self.alignment in VARIANTS, "alignment", f"choose one of {', '.join(VARIANTS)}")
        need(self.repulsive is None or self.repulsive in REPULSIVE_METHODS, "repulsive",
             f"choose one of {', '.join(REPULSIVE_METHODS)}")
        from probattn.repulsive import PRESETS as REPULSIVE_PRESETS

        need(self.repulsive_preset is None or self.repulsive_preset in REPULSIVE_PRESETS, "repulsive_preset",
             f"choose one of {', '.join(REPULSIVE_PRESETS)}")
        need(self.repulsive_preset is None or self.repulsive is not None, "repulsive_preset",
             "needs --repulsive svgd or spos")
        for name in ("alignment_weight", "repulsive_alpha", "lr", "weight_decay", "max_grad_norm", "dropout"):
            value = getattr(self, name)
            if name == "lr" and value is None:
                continue
            need(isinstance(value, int | float) and math.isfinite(value) and value >= 0, name,
                 "must be a finite number >= 0")
        need(self.dropout < 1, "dropout", "must be below 1")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_batch_size", "embed_dim", "num_heads",
                     "num_layers"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(self.max_length >= 3, "max_length", "must be at least 3 tokens")
        need(self.batch_size % self.grad_accum == 0, "batch_size",
             f"must be divisible by --grad-accum {self.grad_accum} (batch_size is the global batch per step)")
        for name in ("checkpoint_every", "warmup_steps", "data_seed", "seed", "eval_every", "patience",
                     "adapt_steps"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, "must be an integer >= 0")
        need(self.max_train_examples is None or self.max_train_examples >= 1, "max_train_examples", "must be >= 1")
        if self.adapt_steps:
            need(self.normalization != "softmax", "adapt_steps",
                 "distils a converted model toward the original: needs --normalization doubly, hybrid or sinkhorn")
            need(self.model not in MODELS or self.model == "minilm", "adapt_steps",
                 "needs a pretrained encoder: --model minilm or a local Hugging Face model directory")
        if self.data != "rotten_tomatoes":
            need(self.text_column is not None and self.label_column is not None, "data",
                 "a data file needs --text-column and --label-column")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device",
             "use auto, cpu or cuda[:N]")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the model's default (:data:`DEFAULT_LR`) when ``lr`` is None."""
        default = DEFAULT_LR.get(self.model, DEFAULT_LR["minilm"])  # a Hugging Face directory: fine-tuning
        return default if self.lr is None else self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return _from_mapping({**self.to_dict(), **changes}, "replace()")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; keys may use dashes or underscores; unknown keys are an error."""
        return _from_mapping(values, source)

    def differences(self, other: TrainConfig, *, ignore=RESUME_SAFE_FIELDS) -> dict[str, tuple[Any, Any]]:
        """``{field: (self value, other value)}`` for the fields that differ, except ``ignore``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def _from_mapping(values: dict[str, Any], source: str) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    normalized = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(normalized) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; valid options are: "
                         f"{', '.join(sorted(names))}")
    for name in FLOAT_FIELDS & set(normalized):  # YAML reads `lr: 1e-3` as the string "1e-3"
        value = normalized[name]
        if isinstance(value, str):
            try:
                normalized[name] = float(value)
            except ValueError:
                raise ValueError(f"{source}: {name} must be a number, got {value!r}") from None
        elif isinstance(value, int) and not isinstance(value, bool):
            normalized[name] = float(value)
    try:
        return TrainConfig(**normalized)
    except TypeError as exc:  # e.g. a comparison between str and int from a badly typed file value
        raise ValueError(f"{source}: a value has the wrong type ({exc})") from exc


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``/``.toml``/``.json`` file into a flat mapping of option -> value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"--config {path}: unknown config type {suffix!r}; use .yaml, .toml or .json")
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("YAML configs need PyYAML: pip install pyyaml", name="yaml") from exc
        parse = lambda text: yaml.safe_load(text) or {}  # noqa: E731
    elif suffix == ".toml":
        import tomllib

        parse = tomllib.loads
    else:
        parse = json.loads
    try:
        values = parse(path.read_text())
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        raise ValueError(f"--config {path}: could not parse it: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values")
    return values
