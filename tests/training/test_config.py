"""TrainConfig: validation, config files, flag precedence, one flag per field."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from probattn.training import TrainConfig, load_config_file
from probattn.training.command import add_arguments, config_from_args
from probattn.training.presets import DEFAULT_PRESET, PRESETS


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_every_field_has_a_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {action.dest for action in parser._actions}
    assert {f.name for f in fields(TrainConfig)} <= dests


def test_file_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 0.01\nbatch-size = 16\nnormalization = "doubly"\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("lr: 0.01\nbatch_size: 16\nnormalization: doubly\n")
    for path in (toml, yaml):
        config = config_from_args(parse(["--config", str(path), "--lr", "0.5"]))
        assert (config.lr, config.batch_size, config.normalization) == (0.5, 16, "doubly")
    assert config_from_args(parse([])) == TrainConfig.from_dict(PRESETS[DEFAULT_PRESET])  # the preset compare uses
    assert config_from_args(parse(["--preset", "tiny", "--max-steps", "7"])) == TrainConfig.from_dict(
        {**PRESETS["tiny"], "max_steps": 7})
    yaml.write_text("lr: 1e-3\nmax_grad_norm: 1\n")  # YAML 1.1 reads 1e-3 as a string
    config = config_from_args(parse(["--config", str(yaml)]))
    assert (config.lr, config.max_grad_norm) == (1e-3, 1.0) and isinstance(config.max_grad_norm, float)
    yaml.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        config_from_args(parse(["--config", str(yaml)]))


def test_unknown_and_bad_options(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) learning_rate; valid options are:"):
        config_from_args(parse(["--config", str(bad)]))
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 1")
    with pytest.raises(ValueError, match="could not parse it"):
        load_config_file(broken)
    with pytest.raises(ValueError, match=r"--normalization 'soft': choose one of"):
        TrainConfig(normalization="soft")
    with pytest.raises(ValueError, match=r"--batch-size 6: must be divisible by --grad-accum 4"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match=r"--alignment 'x': choose one of ct"):
        TrainConfig(alignment="x")
    with pytest.raises(ValueError, match="needs --text-column and --label-column"):
        TrainConfig(data="mine.csv")
    with pytest.raises(ValueError, match=r"--lr .*finite number"):
        TrainConfig(lr=float("nan"))


def test_learning_rate_defaults_per_model():
    assert TrainConfig().learning_rate == 3e-3
    assert TrainConfig(model="minilm").learning_rate == 5e-5
    assert TrainConfig(model="minilm", lr=1e-4).learning_rate == 1e-4


def test_differences_ignore_run_management():
    a = TrainConfig()
    assert a.differences(a.replace(output="x", checkpoint_every=3, resume=True)) == {}
    assert a.differences(a.replace(lr=0.5)) == {"lr": (None, 0.5)}


def test_docs_config_example_is_valid():
    import re
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    page = Path(__file__).parents[2] / "docs" / "training.md"
    if not page.is_file():
        pytest.skip("docs not present")
    block = re.search(r"```yaml\n(.*?)```", page.read_text(), re.S).group(1)
    assert TrainConfig.from_dict(yaml.safe_load(block)).alignment == "ct"
