"""Diagnostics reports: figures (matplotlib) and a Markdown/HTML writer.

Running a model over text is :func:`probattn.report.collect.collect` (needs ``probattn[hf]``); the
``probattn diagnose`` command lives in :mod:`probattn.report.diagnose`.
"""

from probattn.report.writer import Report, format_table

__all__ = ["Report", "format_table"]
