"""Safe, atomic, checksummed files: nothing probattn loads can run code, and a crash never tears a file.

* Files are written by :mod:`probattn.io` (atomic replace, no links followed, recorded in a claimed output
  folder); ``atomic_write`` and ``write_json`` are re-exported from there for older callers.
* :func:`pack` / :func:`unpack`: a nested state (dicts, lists, tuples, numbers, strings, tensors, numpy arrays)
  as JSON plus a flat ``{name: tensor}`` dict for safetensors. Loading parses JSON and safetensors only: no
  pickle, no ``torch.load``.
* :func:`save_checkpoint` writes ``RUN/checkpoint-<step>/`` (``tensors.safetensors``, ``state.json`` and
  ``manifest.json`` with the sha256 of both) into a temporary directory renamed into place, and keeps the
  previous checkpoint beside it. :func:`load_checkpoint` verifies the digests; a mismatch names the damaged
  file and offers the previous good checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probattn import io as safe_io
from probattn.io import atomic_write, fsync_dir, sha256_bytes, write_json

_fsync_dir = fsync_dir
_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "atomic_write",
    "capture_rng_state",
    "checkpoint_dir",
    "file_digest",
    "find_checkpoints",
    "load_checkpoint",
    "pack",
    "read_verified",
    "restore_rng_state",
    "save_checkpoint",
    "tensors_to_bytes",
    "unpack",
    "write_json",
]

FORMAT = 2
TENSORS, STATE, MANIFEST = "tensors.safetensors", "state.json", "manifest.json"
LEGACY_CHECKPOINT = "checkpoint.pt"  # probattn 0.1's pickle: refused, never loaded
_NAME = re.compile(r"checkpoint-(\d+)")
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__pairs__")

class CheckpointError(ValueError):
    """A checkpoint or saved model that cannot be trusted: damaged (digest mismatch), unreadable, or in a
    format that could run code when loaded. The message names the file and says what to do."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, no permission); the previous checkpoint is intact."""


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()


# -- state <-> JSON + tensors ----------------------------------------------------------------------------------
def pack(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(json_value, tensors)``: ``value`` with every tensor / numpy array replaced by a reference into
    ``tensors`` (on CPU; not copied), tuples and dicts with non-string keys tagged so that :func:`unpack` restores them
    exactly. Anything else (an arbitrary object) is a ``TypeError``: a checkpoint holds data, not code."""
    tensors: dict[str, torch.Tensor] = {}

    def go(v: Any, where: str) -> Any:
        if v is None or isinstance(v, bool | int | float | str):
            return v
        if isinstance(v, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = v.detach().cpu()
            return {"__tensor__": name}
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf" or v.dtype.itemsize > 8 or v.dtype == np.uint64:
                raise TypeError(f"{where}: cannot store a numpy array of dtype {v.dtype} in a checkpoint")
            wide = v.astype(np.int64) if v.dtype.kind == "u" and v.dtype != np.uint8 else v
            name = f"t{len(tensors)}"
            tensors[name] = torch.from_numpy(np.ascontiguousarray(wide)).clone()
            return {"__ndarray__": name, "dtype": v.dtype.str}
        if isinstance(v, np.generic):
            return go(v.item(), where)
        if isinstance(v, tuple):
            return {"__tuple__": [go(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [go(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v) and not any(k in _MARKERS for k in v):
                return {k: go(x, f"{where}.{k}") for k, x in v.items()}
            return {"__pairs__": [[go(k, where), go(x, f"{where}[{k!r}]")] for k, x in v.items()]}
        raise TypeError(f"{where}: cannot store a {type(v).__name__} in a checkpoint (only numbers, strings, "
                        f"lists, tuples, dicts, tensors and numpy arrays)")

    return go(value, "state"), tensors


def unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(value, list):
        return [unpack(x, tensors) for x in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(value["dtype"]))
    if "__tuple__" in value:
        return tuple(unpack(x, tensors) for x in value["__tuple__"])
    if "__pairs__" in value:
        return {_hashable(unpack(k, tensors)): unpack(x, tensors) for k, x in value["__pairs__"]}
    return {k: unpack(x, tensors) for k, x in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` serialized by safetensors; non-contiguous tensors and tensors sharing storage with an earlier
    one (tied weights, views) are copied first, the rest are written without a copy."""
    from safetensors.torch import save

    seen: set[int] = set()
    ready = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        pointer = t.untyped_storage().data_ptr()
        if not t.is_contiguous() or (pointer in seen and t.numel()):
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        ready[name] = t
    return save(ready)


# -- digests ---------------------------------------------------------------------------------------------------
def file_digest(data: bytes) -> str:
    """Hex sha256 of ``data`` (:func:`probattn.io.sha256_bytes`)."""
    return sha256_bytes(data)


def read_verified(path: Path, expected: str, *, what: str) -> bytes:
    """The bytes of ``path`` if their sha256 is ``expected``; a :class:`CheckpointError` naming the file if not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{what} {path.parent} is incomplete: {path} is missing") from exc
    found = file_digest(data)
    if found != expected:
        raise CheckpointError(f"{what} {path.parent} is damaged: {path} has sha256 {found[:12]}..., not the "
                              f"{expected[:12]}... recorded when it was saved (a flipped bit on disk or an edited "
                              f"file)")
    return data


# -- checkpoints -----------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``run_dir/checkpoint-<step, 8 digits>``."""
    return Path(run_dir) / f"checkpoint-{step:08d}"


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, directory), ...]`` of the checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def _legacy_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a checkpoint in probattn's old pickle format, which can run arbitrary code when loaded; "
        f"probattn no longer loads pickles. Start the run again (--overwrite), which writes checkpoints as "
        f"safetensors + JSON")


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], *, step: int, keep: int = 2) -> Path:
    """Write ``state`` as ``run_dir/checkpoint-<step>/`` (see the module docstring) and return that directory.

    The files are written into a temporary directory that is renamed into place, so a crash leaves either the
    complete new checkpoint or none; the ``keep`` newest checkpoints are kept (the previous one is offered if
    the newest turns out damaged). A failed write (disk full) raises :class:`CheckpointWriteError` and leaves
    every earlier checkpoint as it was.
    """
    run_dir = Path(run_dir)
    json_state, tensors = pack(state)  # a TypeError here touches no file
    final = checkpoint_dir(run_dir, step)
    safe_io.check_destination(final)  # no link on the way, no foreign directory of that name
    run_dir.mkdir(parents=True, exist_ok=True)
    for pattern in (".checkpoint-*", ".probattn-tmp-checkpoint-*"):  # left by a writer that was killed
        for stale in run_dir.glob(pattern):
            if stale.is_dir() and not stale.is_symlink() and stale.suffix in (".tmp", ".old"):
                shutil.rmtree(stale, ignore_errors=True)
    tmp: Path | None = None
    files = {TENSORS: tensors_to_bytes(tensors), STATE: _json_bytes(json_state)}
    try:
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".probattn-tmp-{final.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_UMASK)
        for name, data in files.items():
            _write_file(tmp / name, data)
        manifest = {"format": FORMAT, "step": step, "sha256": {n: file_digest(d) for n, d in files.items()}}
        _write_file(tmp / MANIFEST, _json_bytes(manifest))
        _fsync_dir(tmp)
        safe_io.record_dir(final)  # inside a claimed output folder: probattn's own (recorded before it appears)
        if final.exists():  # the same step written again (a resumed run): swap the old copy out
            aside = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".probattn-tmp-{final.name}.", suffix=".old"))
            os.replace(final, aside / final.name)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        tmp = None
        _fsync_dir(run_dir)
    except OSError as exc:
        previous = [p for _, p in find_checkpoints(run_dir) if p != final]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint existed"
        hint = "free some disk space" if exc.errno == errno.ENOSPC else "fix the cause"
        error = CheckpointWriteError(f"could not write the checkpoint of step {step} to {run_dir} "
                                     f"({exc.strerror or exc}); {kept}. {hint.capitalize()}, then continue with "
                                     f"--resume")
        error.errno = exc.errno
        raise error from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in find_checkpoints(run_dir)[:-keep]:
        with contextlib.suppress(OSError, safe_io.OutputFolderError):
            safe_io.remove(old)
    return final


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _load_one(directory: Path) -> dict[str, Any]:
    """One verified checkpoint directory; a :class:`CheckpointError` (without advice) if it cannot be trusted."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        digests = manifest["sha256"]
        if not isinstance(digests, dict):
            raise TypeError(f"sha256 is a {type(digests).__name__}, not an object")
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {directory} has format {manifest.get('format')!r}; this probattn "
                                  f"reads format {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {directory} is unreadable: {MANIFEST} is missing or damaged "
                              f"({type(exc).__name__}: {exc})") from exc
    raw = {name: read_verified(directory / name, str(digests.get(name)), what="checkpoint")
           for name in (TENSORS, STATE)}
    try:
        tensors = safetensors_load(raw[TENSORS])
        return unpack(json.loads(raw[STATE]), tensors)
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {directory} is unreadable ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint`, verified against its digests, tensors on CPU.

    ``path`` is a run directory (its newest checkpoint is loaded) or one ``checkpoint-<step>`` directory.
    Nothing is unpickled: a legacy ``checkpoint.pt`` (or any other file) is refused with a
    :class:`CheckpointError`. A damaged newest checkpoint is a :class:`CheckpointError` that names the file and
    the previous good checkpoint, and says how to resume from it.
    """
    path = Path(path)
    if path.is_file():
        raise _legacy_error(path) if path.suffix in (".pt", ".pth", ".bin", ".pkl") else CheckpointError(
            f"{path} is a file; pass the run directory (--output) or one of its checkpoint-<step> directories")
    if _NAME.fullmatch(path.name) and path.is_dir():
        try:
            return _load_one(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; use another checkpoint or start the run again (--overwrite)") from exc
    found = find_checkpoints(path)
    if not found:
        if (path / LEGACY_CHECKPOINT).is_file():
            raise _legacy_error(path / LEGACY_CHECKPOINT)
        raise FileNotFoundError(f"no checkpoint in {path} (a run with --output writes checkpoint-<step> "
                                f"directories)")
    newest, earlier = found[-1][1], found[:-1]
    try:
        return _load_one(newest)
    except CheckpointError as exc:
        good = None
        for s, p in reversed(earlier):
            with contextlib.suppress(CheckpointError):
                _load_one(p)
                good = (s, p)
                break
        if good is None:
            advice = "no earlier good checkpoint is left; start the run again (--overwrite)"
        else:
            advice = (f"the previous checkpoint {good[1]} (step {good[0]}) is intact: to resume from it, delete "
                      f"{newest} and run the same command with --resume again")
        raise CheckpointError(f"{exc}; {advice}") from exc


# -- random number generators ----------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python random states (all storable by :func:`pack`)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
