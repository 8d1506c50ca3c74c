"""The run directory of ``probattn train``: never written over a foreign folder, never through a link, and a saved
model is loaded only as the finished, unchanged model of the run that wrote it (issue 23, items 1, 2, 3, 8)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from probattn.io import MANIFEST, OutputFolderError
from probattn.training import load_trained, train
from probattn.training.checkpoint import CheckpointError


def _hf_like_folder(path):
    """A Hugging Face model folder as `save_pretrained` leaves it (the contents need not load)."""
    from safetensors.torch import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    save_file({"embeddings.weight": torch.arange(12.0).reshape(3, 4)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text("{}")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _cli_train(small_config, *extra):
    from probattn.cli import main

    return main(["train", "--model", "tiny", "--data", small_config.data, "--text-column", "text",
                 "--label-column", "label", "--embed-dim", "16", "--num-layers", "1", "--max-length", "24",
                 "--max-steps", "2", "--batch-size", "8", "--no-progress", *extra])


def test_train_into_a_hugging_face_model_folder_is_refused_and_leaves_it_byte_for_byte(small_config, tmp_path,
                                                                                       capsys):
    folder = tmp_path / "hf-model"
    before = _hf_like_folder(folder)
    with pytest.raises(OutputFolderError, match=r"--output \S+hf-model holds 3 file\(s\) that probattn did not "
                                                r"write \(config\.json, model\.safetensors, tokenizer\.json\).*"
                                                r"--overwrite"):
        train(small_config.replace(output=str(folder)), progress=False)
    with pytest.raises(OutputFolderError, match=r"config\.json, model\.safetensors would be written but are not "
                                                r"probattn's"):
        train(small_config.replace(output=str(folder), overwrite=True), progress=False)
    assert _cli_train(small_config, "--output", str(folder), "--overwrite") != 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # not one byte changed, nothing added


def test_cli_refusal_is_one_line_naming_the_folder_and_overwrite(small_config, tmp_path, capsys):
    folder = tmp_path / "hf-model"
    before = _hf_like_folder(folder)
    code = _cli_train(small_config, "--output", str(folder))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert str(folder) in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_results_and_reliability_are_never_written_through_a_link(small_config, tmp_path):
    target = tmp_path / "elsewhere" / "notes.md"
    target.parent.mkdir()
    target.write_text("keep me")
    out = tmp_path / "run"
    assert _cli_train(small_config, "--output", str(out)) == 0
    assert {"results.md", "reliability.png", MANIFEST} <= {p.name for p in out.iterdir()}

    def place_links():
        for name in ("results.md", "reliability.png"):
            (out / name).unlink()
            (out / name).symlink_to(target)  # a link placed in the run folder, pointing elsewhere

    place_links()
    assert _cli_train(small_config, "--output", str(out), "--resume") != 0  # the finished run is re-reported: refused
    assert target.read_text() == "keep me" and (out / "results.md").is_symlink()
    assert _cli_train(small_config, "--output", str(out), "--overwrite") == 0  # the links go, new files come
    assert target.read_text() == "keep me"
    for name in ("results.md", "reliability.png"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 100


def test_overwrite_keeps_a_foreign_file_and_replaces_the_run(small_config, tmp_path):
    out = tmp_path / "run"
    first = train(small_config.replace(output=str(out)), progress=False)
    (out / "my-notes.txt").write_text("mine")
    second = train(small_config.replace(output=str(out), overwrite=True, seed=1), progress=False)
    assert (out / "my-notes.txt").read_text() == "mine"
    assert second.metrics["run"]["id"] != first.metrics["run"]["id"]
    assert load_trained(out)[2] == second.label_names


def test_a_run_killed_during_overwrite_leaves_no_loadable_model(small_config, tmp_path):
    out = tmp_path / "run"
    train(small_config.replace(output=str(out)), progress=False)
    load_trained(out)  # finished: loads

    class Killed(BaseException):
        pass

    def die(record):
        raise Killed  # the new run is stopped mid-training

    with pytest.raises(Killed):
        train(small_config.replace(output=str(out), overwrite=True, seed=1), progress=False, on_step=die)
    with pytest.raises((CheckpointError, FileNotFoundError), match=r"not a finished run|no saved model"):
        load_trained(out)


@pytest.mark.parametrize("left", ["metrics.json", "model of another run"])
def test_stale_model_files_are_refused(small_config, tmp_path, left):
    """The previous run's model.safetensors / model.json without this run's record (what 0.2.0's --overwrite left
    after a kill: it deleted metrics.json first) or next to another run's record are refused."""
    out, other = tmp_path / "run", tmp_path / "other"
    train(small_config.replace(output=str(out)), progress=False)
    if left == "metrics.json":
        (out / "metrics.json").unlink()
        match = r"not a finished run: metrics\.json.*is missing.*killed|not a finished run.*--overwrite"
    else:
        train(small_config.replace(output=str(other), seed=1), progress=False)
        for name in ("model.safetensors", "model.json"):
            shutil.copyfile(other / name, out / name)  # weights and model.json of another run, record of this one
        match = r"model\.json has sha256 .*not the .* recorded in metrics\.json"
    with pytest.raises(CheckpointError, match=match):
        load_trained(out)
    from probattn.report.diagnose import _load

    with pytest.raises(CheckpointError, match="saved model"):
        _load(str(out))


def test_swapped_labels_in_model_json_are_refused_naming_the_file(small_config, tmp_path):
    out = tmp_path / "run"
    train(small_config.replace(output=str(out)), progress=False)
    info = json.loads((out / "model.json").read_text())
    info["label_names"] = info["label_names"][::-1]  # the weights now predict the other label's name
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    with pytest.raises(CheckpointError, match=r"model\.json has sha256 .*labels, vocabulary or options changed"):
        load_trained(out)
    info["label_names"] = info["label_names"][::-1]
    info["config"]["normalization"] = "doubly"  # a changed normalization
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    with pytest.raises(CheckpointError, match=r"model\.json"):
        load_trained(out)


def test_a_model_saved_by_probattn_0_2_loads_with_a_warning(small_config, tmp_path):
    out = tmp_path / "run"
    train(small_config.replace(output=str(out)), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["run"]
    (out / "metrics.json").write_text(json.dumps(metrics))
    with pytest.warns(UserWarning, match=r"written by probattn 0\.2: model\.json .* unchecked"):
        load_trained(out)
