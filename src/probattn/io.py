"""Safe file writing, the bottom of the house: every layer may import it, it imports nothing of probattn.

Rules (docs/training.md, "What an output folder may hold"):

* Every file is written to a temporary file in the same folder, flushed, ``fsync``-ed and moved onto its name
  with ``os.replace`` (:func:`atomic_write`, :func:`write_bytes`, :func:`write_text`, :func:`write_json`,
  :func:`save_figure`): a crash leaves the old file or the new one, never a torn one.
* Nothing is written through a link: a symlink at the destination is refused, and inside an output folder so is
  a link anywhere between the folder and the destination (``runs/`` pointing elsewhere).
* An output folder is claimed once per command by :func:`claim_output_dir`. It is accepted when it does not
  exist, is empty, or holds only files that a probattn command recorded as its own in the folder's manifest
  ``probattn-output.json`` (relative path -> sha256 and size, rewritten atomically after every file). Anything
  else is refused with one line naming the folder and ``--overwrite``. ``--overwrite`` deletes the files
  probattn recorded there and nothing else; a file probattn did not write is never replaced or deleted (a write
  onto its name is refused, naming it).
* Every write below a claimed folder is recorded in its manifest (found by walking up from the destination), so
  the record stays right whatever layer writes the file. Writes elsewhere (caches) are atomic and refuse links,
  with no record.
* :func:`sha256_bytes` / :func:`sha256_file`: the digests every safe format of probattn carries.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MANIFEST",
    "OutputFolderError",
    "UnsafeWriteError",
    "atomic_write",
    "check_destination",
    "claim_output_dir",
    "fsync_dir",
    "is_recorded",
    "output_root",
    "record_dir",
    "remove",
    "save_figure",
    "sha256_bytes",
    "sha256_file",
    "write_bytes",
    "write_json",
    "write_text",
]

MANIFEST = "probattn-output.json"
MANIFEST_FORMAT = 1
_PRIVATE = ".probattn-"  # temporary files and folders: never foreign, never recorded
_ROOT_SEARCH_DEPTH = 8  # how many folders above a destination are searched for the manifest

_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputFolderError(ValueError):
    """An output folder (or a file in it) that a probattn command may not write: it holds files probattn did
    not write, or the name to be written belongs to such a file. The message names the folder or file and says
    what to do."""


class UnsafeWriteError(OutputFolderError):
    """A write that would go through a symbolic link (at the destination or in the folders of an output
    folder). The message names the link."""


# -- digests ---------------------------------------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path`` (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- links and manifests ---------------------------------------------------------------------------------------
def fsync_dir(path: str | Path) -> None:
    """``fsync`` a directory (makes a rename or unlink in it durable)."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def output_root(path: str | Path) -> Path | None:
    """The claimed output folder (holding :data:`MANIFEST`) that ``path`` lies in, or None."""
    here = Path(os.path.abspath(path)).parent
    for _ in range(_ROOT_SEARCH_DEPTH):
        if (here / MANIFEST).is_file() and not (here / MANIFEST).is_symlink():
            return here
        if here.parent == here:
            break
        here = here.parent
    return None


def _relative(root: Path, path: Path) -> str:
    return Path(os.path.abspath(path)).relative_to(root).as_posix()


def _check_no_links(root: Path | None, path: Path) -> None:
    """Refuse ``path`` if it is a link, or if a folder between ``root`` (included) and ``path`` is one."""
    if path.is_symlink():
        raise UnsafeWriteError(f"{path} is a symbolic link (to {os.readlink(path)}); probattn never writes through "
                               f"a link: remove the link or choose another output folder")
    if root is None:
        return
    here = Path(os.path.abspath(path)).parent
    while True:
        if here.is_symlink():
            raise UnsafeWriteError(f"{here} (inside the output folder {root}) is a symbolic link; probattn never "
                                   f"writes through a link: remove it or choose another output folder")
        if here == root or here.parent == here:
            return
        here = here.parent


def _empty_manifest(command: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"format": MANIFEST_FORMAT, "written_by": "probattn", "command": command, "created": now,
            "files": {}, "dirs": []}


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if not (isinstance(manifest.get("files"), dict) and isinstance(manifest.get("dirs", []), list)):
            raise ValueError("files must be an object and dirs a list")
    except (OSError, ValueError, AttributeError) as exc:
        raise OutputFolderError(f"{root / MANIFEST} (probattn's record of the files it wrote in {root}) is "
                                f"unreadable ({type(exc).__name__}: {exc}); choose another --output") from exc
    manifest.setdefault("dirs", [])
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    _replace_with(root / MANIFEST, lambda handle: handle.write(data))


@contextlib.contextmanager
def _locked(root: Path, *, write_back: bool = True) -> Iterator[dict[str, Any]]:
    """The manifest of ``root``, read under an exclusive lock (processes writing into one folder) and written
    back atomically when the block ends without an error (unless ``write_back`` is False)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # the folder itself is the lock: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        manifest = _read_manifest(root)
        yield manifest
        if write_back:
            _write_manifest(root, manifest)
    finally:
        os.close(fd)  # (releases the lock)


def _owned(manifest: dict[str, Any], relative: str) -> bool:
    if relative in manifest["files"]:
        return True
    return any(relative == d or relative.startswith(d + "/") for d in manifest["dirs"])


def is_recorded(path: str | Path) -> bool:
    """Whether ``path`` lies in a claimed output folder and is recorded there as written by probattn."""
    root = output_root(path)
    return root is not None and _owned(_read_manifest(root), _relative(root, Path(path)))


# -- writing ---------------------------------------------------------------------------------------------------
class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, handle: IO[bytes]):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self.handle.write(view)


def _replace_with(path: Path, write: Callable[[IO[bytes]], None],
                  before_replace: Callable[[str, int], None] | None = None) -> tuple[str, int]:
    """Write into a temporary file next to ``path``, fsync, call ``before_replace(sha256, size)`` (the record is
    written before the file appears: a kill in between leaves no unrecorded file), ``os.replace`` it onto
    ``path``; returns (sha256, size)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_PRIVATE}tmp-{path.name[:80]}.")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as handle:
            hashing = _HashingWriter(handle)
            write(hashing)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(hashing.digest.hexdigest(), hashing.size)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return hashing.digest.hexdigest(), hashing.size


def _mkdirs(root: Path | None, folder: Path) -> None:
    if root is not None:
        _check_no_links(root, folder / "x")
    folder.mkdir(parents=True, exist_ok=True)


def check_destination(path: str | Path) -> Path | None:
    """Refuse to write ``path`` (:class:`UnsafeWriteError` for a link, :class:`OutputFolderError` for a file that
    probattn did not write, inside a claimed output folder) and return that folder (None outside one). For
    writers that rename whole directories into place (checkpoints); files go through :func:`atomic_write`."""
    path = Path(path)
    root = output_root(path)
    _check_no_links(root, path)
    if root is not None and (path.exists() or path.is_symlink()) \
            and not _owned(_read_manifest(root), _relative(root, path)):
        raise OutputFolderError(f"{path}: a file that probattn did not write is in the way; probattn never "
                                f"replaces such a file (not even with --overwrite): move it away or choose "
                                f"another --output")
    return root


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` and atomically move it onto ``path``.

    Refuses (:class:`UnsafeWriteError`) a link at ``path`` or, inside a claimed output folder, in the folders
    leading to it; inside a claimed folder refuses (:class:`OutputFolderError`) to replace a file that probattn
    did not record as its own, and records the new file's sha256 in the folder's manifest.
    """
    path = Path(path)
    root = output_root(path)
    _check_no_links(root, path)
    _mkdirs(root, path.parent)
    if root is None:
        _replace_with(path, write)
        return path
    relative = _relative(root, path)
    with _locked(root, write_back=False) as manifest:  # (the record is written once, before the file appears)
        if (path.exists() or path.is_symlink()) and not _owned(manifest, relative):
            raise OutputFolderError(f"{path}: a file that probattn did not write is in the way; probattn never "
                                    f"replaces such a file (not even with --overwrite): move it away or choose "
                                    f"another --output")
        def record(digest: str, size: int) -> None:
            manifest["files"][relative] = {"sha256": digest, "bytes": size}
            _write_manifest(root, manifest)

        _replace_with(path, write, record)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path`` (see :func:`atomic_write`)."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | Path, value: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``value`` as JSON (``indent`` 2 by default, a final newline)."""
    return write_bytes(path, (json.dumps(value, indent=indent) + "\n").encode())


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """``fig.savefig`` into memory (format from ``path``'s suffix), then :func:`write_bytes`."""
    buffer = io.BytesIO()
    savefig.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    fig.savefig(buffer, **savefig)
    return write_bytes(path, buffer.getvalue())


def record_dir(path: str | Path) -> None:
    """Record a directory that probattn created as a whole (a checkpoint renamed into place) as its own, in the
    manifest of the claimed folder it lies in (nothing happens outside a claimed folder)."""
    path = Path(path)
    root = output_root(path)
    if root is None:
        return
    relative = _relative(root, path)
    with _locked(root) as manifest:
        if relative not in manifest["dirs"]:
            manifest["dirs"].append(relative)


def remove(path: str | Path) -> None:
    """Delete a file or directory probattn wrote (and its record). Inside a claimed folder a path that is not
    recorded is refused with :class:`OutputFolderError`; a missing path is no error."""
    path = Path(path)
    root = output_root(path)
    if root is not None:
        relative = _relative(root, path)
        with _locked(root) as manifest:
            inside = [f"{relative}/{name}" for name in _entries(path)] if path.is_dir() and not path.is_symlink() \
                else []
            if (path.exists() or path.is_symlink()) and not _owned(manifest, relative) \
                    and not (inside and all(_owned(manifest, name) for name in inside)):
                raise OutputFolderError(f"{path}: not written by probattn, so probattn does not delete it")
            _delete(path)
            manifest["files"] = {k: v for k, v in manifest["files"].items()
                                 if k != relative and not k.startswith(relative + "/")}
            manifest["dirs"] = [d for d in manifest["dirs"] if d != relative and not d.startswith(relative + "/")]
        return
    _delete(path)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# -- output folders --------------------------------------------------------------------------------------------
def _entries(root: Path) -> list[str]:
    """Relative paths of every file and link below ``root`` (links not followed), skipping probattn's private
    files and the manifest."""
    found = []
    for here, dirs, files in os.walk(root):
        rel_here = Path(here).relative_to(root)
        for name in list(dirs):
            if name.startswith(_PRIVATE):
                dirs.remove(name)
            elif (Path(here) / name).is_symlink():
                found.append((rel_here / name).as_posix())  # a link to a folder: foreign, never entered
                dirs.remove(name)
        for name in files:
            if not name.startswith(_PRIVATE) and not (here == str(root) and name == MANIFEST):
                found.append((rel_here / name).as_posix())
    return sorted(found)


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _legacy_run(root: Path) -> bool:
    """Whether a folder without a manifest holds a run of probattn 0.2 (a checkpoint or saved run records)."""
    return any(root.glob("checkpoint-*/manifest.json")) or any(root.glob("**/checkpoint-*/manifest.json")) \
        or any(root.glob("runs/*.json"))


def claim_output_dir(path: str | Path, *, command: str, overwrite: bool = False, resume: bool = False,
                     will_write: Iterable[str] = (), log: Callable[[str], None] | None = None) -> Path:
    """Check that ``path`` may receive the files of ``command`` (e.g. ``"probattn train"``), create it and its
    manifest, and return it.

    Accepted: a folder that does not exist, is empty, or holds only files recorded in its
    :data:`MANIFEST` by a probattn command. Anything else is an :class:`OutputFolderError` naming the folder,
    some of the files and ``--overwrite``. With ``overwrite`` (and not ``resume``) the recorded files are
    deleted first and the other files kept; ``will_write`` (paths relative to the folder) are checked against
    them, so that a collision is refused before any work. ``resume`` keeps the recorded files; a folder written
    by probattn 0.2 (no manifest, but checkpoints or ``runs/*.json``) is then adopted as probattn's, which
    ``log`` (default: stderr) reports. A link as the folder is refused (:class:`UnsafeWriteError`).
    """
    root = Path(os.path.abspath(path))
    say = log or (lambda message: print(f"probattn: {message}", file=sys.stderr, flush=True))
    if root.is_symlink():
        raise UnsafeWriteError(f"--output {path} is a symbolic link (to {os.readlink(root)}); probattn never writes "
                               f"through a link: pass the real folder")
    if root.exists() and not root.is_dir():
        raise OutputFolderError(f"--output {path}: exists and is not a folder; choose a folder path")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"--output {path}: cannot write there ({exc.strerror or exc}); choose a "
                                f"writable folder") from exc
    if (root / MANIFEST).is_symlink():
        raise UnsafeWriteError(f"{root / MANIFEST} is a symbolic link; choose another --output")
    if not (root / MANIFEST).is_file():  # nothing is written into the folder before it is accepted
        manifest = _empty_manifest(command)
        present = _entries(root)
        if present and resume and _legacy_run(root):
            manifest["files"] = {name: {"sha256": None, "bytes": None} for name in present}
            say(f"{path} holds a run written before probattn recorded its files; adopting its {len(present)} "
                f"files as probattn's ({MANIFEST})")
        _check_claim(path, manifest, present, overwrite, will_write)
        try:
            _write_manifest(root, manifest)
        except OSError as exc:
            raise OutputFolderError(f"--output {path}: cannot write there ({exc.strerror or exc}); choose a "
                                    f"writable folder") from exc
        return root
    with _locked(root) as manifest:
        _check_claim(path, manifest, _entries(root), overwrite, will_write)
        if overwrite and not resume:
            for name in sorted(manifest["files"]) + sorted(manifest["dirs"]):
                target = root / name
                if target.is_symlink():
                    target.unlink()
                elif target.exists():
                    _delete(target)
            manifest["files"], manifest["dirs"] = {}, []
            manifest["command"] = command
    return root


def _check_claim(path: str | Path, manifest: dict[str, Any], present: list[str], overwrite: bool,
                 will_write: Iterable[str]) -> None:
    foreign = [name for name in present if not _owned(manifest, name)]
    if foreign and not overwrite:
        raise OutputFolderError(
            f"--output {path} holds {len(foreign)} file(s) that probattn did not write ({_listing(foreign)}); "
            f"choose a new or empty folder, or pass --overwrite to write beside them (probattn never replaces "
            f"or deletes a file it did not write)")
    clash = sorted({Path(n).as_posix() for n in will_write} & set(foreign))
    if clash:
        raise OutputFolderError(
            f"--output {path}: {_listing(clash)} would be written but {'is' if len(clash) == 1 else 'are'} "
            f"not probattn's; probattn never replaces a file it did not write (not even with --overwrite): "
            f"choose another --output")
