"""The top-level package: its exports resolve, and importing it needs nothing but torch."""

from __future__ import annotations

import subprocess
import sys

import probattn


def test_every_export_resolves():
    for name in probattn.__all__:
        assert getattr(probattn, name) is not None, name


def test_import_does_not_load_optional_packages():
    code = "import sys, probattn; print(sorted(m for m in ('transformers', 'matplotlib', 'pandas') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
