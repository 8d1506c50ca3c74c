"""Atomic files: a crash or ``SIGKILL`` at any moment leaves either the old file or the new one, never a torn one.

Write to a temporary file in the same directory, flush, ``fsync``, ``os.replace`` onto the final name, then
``fsync`` the directory so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = ["atomic_write", "capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint",
           "write_json"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` and atomically move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Atomically write ``value`` as indented JSON."""
    data = (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write(path, lambda handle: handle.write(data))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save(state)`` to ``path``."""
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (on CPU); a clear error if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                         f"it was not written by probattn or the disk is damaged") from exc


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python random states."""
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
