"""probattn.io: atomic writes that never follow a link, and output folders that never lose a foreign file."""

from __future__ import annotations

import json
import os

import pytest

from probattn import io as safe_io
from probattn.io import (
    MANIFEST,
    OutputFolderError,
    UnsafeWriteError,
    claim_output_dir,
    sha256_bytes,
    sha256_file,
    write_bytes,
    write_json,
    write_text,
)


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _outside(tmp_path):
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_text("keep me")
    return target


def test_digests_match_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)  # several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / "f")


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = write_text(tmp_path / "a" / "b.txt", "hello")
    assert path.read_text() == "hello"

    def dies(handle):
        handle.write(b"half")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        safe_io.atomic_write(path, dies)
    assert path.read_text() == "hello"  # the old content, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.txt"]


def test_a_link_at_the_destination_is_refused_and_its_target_unchanged(tmp_path):
    target = _outside(tmp_path)
    link = tmp_path / "cache" / "entry.json"
    link.parent.mkdir()
    link.symlink_to(target)
    with pytest.raises(UnsafeWriteError, match=r"entry\.json is a symbolic link .*never writes through a link"):
        write_json(link, {"x": 1})
    assert target.read_text() == "keep me" and link.is_symlink()


def test_new_empty_and_own_folders_are_accepted(tmp_path):
    out = claim_output_dir(tmp_path / "new" / "run", command="probattn test")
    assert out.is_dir() and _manifest(out)["files"] == {}
    (tmp_path / "empty").mkdir()
    claim_output_dir(tmp_path / "empty", command="probattn test")
    write_text(out / "results.md", "# one")
    write_bytes(out / "runs" / "a.json", b"{}")
    recorded = _manifest(out)["files"]
    assert recorded["results.md"]["sha256"] == sha256_bytes(b"# one")
    assert recorded["runs/a.json"] == {"sha256": sha256_bytes(b"{}"), "bytes": 2}
    assert claim_output_dir(out, command="probattn test") == out  # only probattn's files: accepted again
    write_text(out / "results.md", "# two")  # and its own files may be replaced
    assert (out / "results.md").read_text() == "# two"


def test_a_folder_with_foreign_files_is_refused_naming_it_and_overwrite(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(OutputFolderError, match=r"--output \S+model holds 1 file\(s\) that probattn did not write "
                                                r"\(config\.json\).*--overwrite"):
        claim_output_dir(folder, command="probattn test")
    assert (folder / "config.json").read_text() == '{"model_type": "bert"}'


def test_overwrite_deletes_only_probattn_files_and_never_replaces_a_foreign_one(tmp_path):
    out = claim_output_dir(tmp_path / "out", command="probattn test")
    write_text(out / "results.md", "old")
    write_text(out / "runs" / "a.json", "{}")
    (out / "notes.txt").write_text("mine")  # the user's file, added later
    with pytest.raises(OutputFolderError, match=r"notes\.txt.*--overwrite"):
        claim_output_dir(out, command="probattn test")
    with pytest.raises(OutputFolderError, match=r"notes\.txt would be written but is not probattn's"):
        claim_output_dir(out, command="probattn test", overwrite=True, will_write=["notes.txt"])
    assert (out / "results.md").read_text() == "old"  # a refused claim deletes nothing
    claim_output_dir(out, command="probattn test", overwrite=True, will_write=["results.md"])
    assert not (out / "results.md").exists() and not (out / "runs" / "a.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputFolderError, match=r"notes\.txt: a file that probattn did not write is in the way"):
        write_text(out / "notes.txt", "replaced")
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputFolderError, match="does not delete it"):
        safe_io.remove(out / "notes.txt")


def test_links_in_an_output_folder_are_refused_and_their_targets_unchanged(tmp_path):
    target = _outside(tmp_path)
    out = claim_output_dir(tmp_path / "out", command="probattn test")
    (out / "results.md").symlink_to(target)
    with pytest.raises(OutputFolderError, match=r"results\.md"):
        write_text(out / "results.md", "# results")
    (out / "runs").symlink_to(target.parent, target_is_directory=True)
    with pytest.raises(UnsafeWriteError, match=r"runs \(inside the output folder \S+\) is a symbolic link"):
        write_text(out / "runs" / "precious.txt", "overwritten")
    assert target.read_text() == "keep me"
    with pytest.raises(OutputFolderError, match=r"results\.md, runs.*--overwrite"):
        claim_output_dir(out, command="probattn test")
    link = tmp_path / "link-out"
    link.symlink_to(out, target_is_directory=True)
    with pytest.raises(UnsafeWriteError, match="is a symbolic link"):
        claim_output_dir(link, command="probattn test")


def test_resume_adopts_a_run_written_before_manifests(tmp_path, capsys):
    old = tmp_path / "old"
    (old / "runs").mkdir(parents=True)
    (old / "runs" / "softmax-seed0.json").write_text("{}")
    (old / "results.md").write_text("# old")
    with pytest.raises(OutputFolderError, match="did not write"):
        claim_output_dir(old, command="probattn test")
    claim_output_dir(old, command="probattn test", resume=True)
    assert "adopting its 2 files" in capsys.readouterr().err
    write_text(old / "results.md", "# new")
    assert (old / "results.md").read_text() == "# new"


def test_checkpoint_directories_are_recorded_and_pruned(tmp_path):
    from probattn.training.checkpoint import find_checkpoints, save_checkpoint

    out = claim_output_dir(tmp_path / "run", command="probattn test")
    for step in (1, 2, 3):
        save_checkpoint(out, {"step": step}, step=step)
    assert [s for s, _ in find_checkpoints(out)] == [2, 3]
    assert _manifest(out)["dirs"] == ["checkpoint-00000002", "checkpoint-00000003"]
    assert claim_output_dir(out, command="probattn test", resume=True) == out
