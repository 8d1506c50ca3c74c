"""The dispatcher: help without heavy imports, one clear line for a missing optional package."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from probattn import cli


def test_help_lists_every_command_without_importing_them():
    code = (
        "import sys, contextlib, io\n"
        "from probattn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(out.getvalue())\n"
        "print('transformers' in sys.modules, 'probattn.experiments.compare' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in cli.COMMANDS:
        assert name in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False False"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["trian"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_missing_optional_package_is_one_clear_line(monkeypatch, capsys):
    def fake_import(name):
        if name == "probattn.fake_command":
            raise ModuleNotFoundError("No module named 'some_extra'", name="some_extra")
        return types.ModuleType(name)

    monkeypatch.setitem(cli.COMMANDS, "fake", ("probattn.fake_command", "a command that needs an extra"))
    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert "some_extra" in err and "pip install" in err


def test_expected_errors_become_exit_status_2(monkeypatch, capsys):
    def failing_run(args):
        raise ValueError("--data: file is empty")

    module = types.SimpleNamespace(add_arguments=lambda parser: None, run=failing_run)
    monkeypatch.setitem(cli.COMMANDS, "fails", ("probattn.fails", "always fails"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: module)
    assert cli.main(["fails"]) == 2
    assert "probattn fails: error: --data: file is empty" in capsys.readouterr().err
