"""Checkpoint and saved-model files: nothing loaded runs code, digests catch damage, write failures are clear."""

from __future__ import annotations

import errno
import json
import os
import random

import numpy as np
import pytest
import torch

from probattn.training import load_trained, train
from probattn.training.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    capture_rng_state,
    find_checkpoints,
    load_checkpoint,
    pack,
    restore_rng_state,
    save_checkpoint,
    unpack,
)


class Stop(Exception):
    pass


def _stop_at(step):
    def on_step(record):
        if record["step"] == step:
            raise Stop

    return on_step


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _payload_file(path, marker) -> None:
    torch.save({"config": {}, "step": 1, "model": Payload(marker)}, path)  # a real torch.save zip archive


def test_payload_is_live(tmp_path):
    """The payload really runs when unpickled (else the tests below would prove nothing)."""
    _payload_file(tmp_path / "p.pt", tmp_path / "ran")
    torch.load(tmp_path / "p.pt", weights_only=False)  # what probattn 0.1 did: runs `touch ran`
    assert (tmp_path / "ran").exists()


def test_resume_refuses_a_pickle_checkpoint_without_running_it(small_config, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "ran"
    out.mkdir()
    _payload_file(out / "checkpoint.pt", marker)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is a checkpoint in probattn's old pickle format.*"
                                              r"no longer loads pickles.*--overwrite"):
        train(small_config.replace(output=str(out), resume=True), progress=False)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="old pickle format"):
        load_checkpoint(out / "checkpoint.pt")
    assert not marker.exists()


def test_load_trained_refuses_a_pickle_model_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    _payload_file(tmp_path / "model.pt", marker)
    for path in (tmp_path, tmp_path / "model.pt"):
        with pytest.raises(CheckpointError, match=r"model\.pt is not a probattn model in the safe format.*never "
                                                  r"unpickles"):
            load_trained(path)
    assert not marker.exists()


def test_pickle_behind_a_valid_digest_is_unreadable_not_run(tmp_path):
    directory = save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(3)}, step=1)
    marker = tmp_path / "ran"
    _payload_file(directory / "tensors.safetensors", marker)
    manifest = json.loads((directory / "manifest.json").read_text())
    import hashlib

    manifest["sha256"]["tensors.safetensors"] = hashlib.sha256((directory / "tensors.safetensors").read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"checkpoint-00000001 is unreadable \(SafetensorError"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_pack_round_trip_keeps_rng_states_and_int_keys_exact():
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # numpy now holds a cached Gaussian (has_gauss = 1)
    state = {"rng": capture_rng_state(), "opt": {0: {"step": torch.tensor(3.0)}, 7: {}}, "t": (1, 2.5, None),
             "nan": float("nan"), "__tensor__": "not a reference"}
    json_state, tensors = pack(state)
    back = unpack(json.loads(json.dumps(json_state)), tensors)
    assert set(back["opt"]) == {0, 7} and back["opt"][0]["step"].item() == 3.0
    assert back["t"] == (1, 2.5, None) and back["__tensor__"] == "not a reference" and np.isnan(back["nan"])
    expected = (torch.rand(4), np.random.standard_normal(3), np.random.randint(1 << 30), random.random())
    restore_rng_state(back["rng"])
    again = (torch.rand(4), np.random.standard_normal(3), np.random.randint(1 << 30), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def _flip_last_float(path) -> None:
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x40  # the high bits of the last float in the data block
    path.write_bytes(bytes(data))


def test_flipped_byte_is_named_and_the_previous_checkpoint_resumes(small_config, tmp_path):
    config = small_config.replace(checkpoint_every=2, max_steps=7)
    full = train(config.replace(output=str(tmp_path / "full")), progress=False)
    out = tmp_path / "r"
    with pytest.raises(Stop):
        train(config.replace(output=str(out)), progress=False, on_step=_stop_at(5))
    assert [s for s, _ in find_checkpoints(out)] == [2, 4]  # the newest two are kept
    _flip_last_float(out / "checkpoint-00000004" / "tensors.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint-00000004 is damaged: \S+tensors\.safetensors has sha256 "
                                              r".*the previous checkpoint \S+checkpoint-00000002 \(step 2\) is "
                                              r"intact: to resume from it, delete \S+checkpoint-00000004 and run the "
                                              r"same command with --resume"):
        train(config.replace(output=str(out), resume=True), progress=False)
    import shutil

    shutil.rmtree(out / "checkpoint-00000004")
    resumed = train(config.replace(output=str(out), resume=True), progress=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_flipped_byte_in_saved_model_is_refused(small_config, tmp_path):
    train(small_config.replace(output=str(tmp_path), max_steps=1), progress=False)
    load_trained(tmp_path)
    _flip_last_float(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"saved model \S+ is damaged: \S+model\.safetensors has sha256"):
        load_trained(tmp_path)


class _Disk:
    """Simulates a full disk: once ``full``, every write to a file opened for writing raises ENOSPC."""

    def __init__(self, monkeypatch):
        self.full = False
        disk = self

        class File:
            def __init__(self, handle):
                self._handle = handle

            def write(self, data):
                if disk.full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self._handle.write(data)

            def __getattr__(self, name):
                return getattr(self._handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._handle.close()

        def wrap(real):
            def opener(file, mode="r", *args, **kwargs):
                handle = real(file, mode, *args, **kwargs)
                return File(handle) if any(c in mode for c in "wax") else handle

            return opener

        import builtins

        monkeypatch.setattr(builtins, "open", wrap(builtins.open))
        monkeypatch.setattr(os, "fdopen", wrap(os.fdopen))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(small_config, tmp_path, monkeypatch):
    disk = _Disk(monkeypatch)

    def fill_disk(record):
        disk.full = record["step"] >= 3  # the disk fills up after the checkpoint of step 2

    out = tmp_path / "r"
    config = small_config.replace(output=str(out), checkpoint_every=2, max_steps=6)
    with pytest.raises(CheckpointWriteError, match=r"could not write the checkpoint of step 4 to \S+ \(No space left "
                                                   r"on device\); the previous checkpoint \S+checkpoint-00000002 is "
                                                   r"intact\. Free some disk space, then continue with --resume"):
        train(config, progress=False, on_step=fill_disk)
    assert load_checkpoint(out)["step"] == 2
    left = sorted(p.name for p in out.iterdir() if p.name != "probattn-output.json")
    assert left == ["checkpoint-00000002"]  # no temporary directory left
    disk.full = False
    assert train(config.replace(resume=True), progress=False).history[-1]["step"] == 6


def test_disk_full_is_one_line_from_the_cli(small_config, tmp_path, monkeypatch, capsys):
    import probattn.training.loop as loop
    from probattn.cli import main

    disk, save = _Disk(monkeypatch), loop.save_checkpoint

    def fill_then_save(*args, **kwargs):  # the disk fills up before the first checkpoint
        disk.full = True
        return save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", fill_then_save)
    code = main(["train", "--model", "tiny", "--data", small_config.data, "--text-column", "text",
                 "--label-column", "label", "--embed-dim", "16", "--num-layers", "1", "--max-steps", "1", "--batch-size", "8",
                 "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("probattn train: error: could not write the checkpoint of step 1 to ")
    assert "No space left on device" in err and "no earlier checkpoint existed" in err


@pytest.mark.parametrize("manifest", ["not json", "[1, 2]", '{"format": 2, "sha256": [1]}',
                                      '{"format": 1, "sha256": {}}'])
def test_damaged_manifest_is_a_clear_error(tmp_path, manifest):
    directory = save_checkpoint(tmp_path, {"step": 1}, step=1)
    (directory / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match=r"checkpoint-00000001 (is unreadable: manifest\.json is missing or "
                                              r"damaged|has format 1; this probattn reads format 2).*no earlier good "
                                              r"checkpoint is left"):
        load_checkpoint(tmp_path)


def test_tied_weights_views_and_empty_tensors_round_trip(tmp_path):
    w = torch.arange(12.0).reshape(3, 4)
    state = {"a": w, "tied": w, "rows": w[1:], "transposed": w.t(), "empty": torch.zeros(0), "scalar": torch.tensor(2)}
    save_checkpoint(tmp_path, state, step=1)
    back = load_checkpoint(tmp_path)
    for name, value in state.items():
        assert torch.equal(back[name], value) and back[name].dtype == value.dtype, name
