"""The ``probattn`` command line: ``train | compare | experiment | diagnose | bench | adapt``.

Thin by design: each command's arguments and work live in the package that owns it (a module with
``add_arguments(parser)`` and ``run(args) -> int``); this file only dispatches and turns expected errors into
one clear line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module that owns it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("probattn.training.command", "train one model on real data (or your own CSV/JSONL/Parquet)"),
    "compare": ("probattn.experiments.compare", "train and compare attention variants over seeds (the main job)"),
    "experiment": ("probattn.experiments.command", "run one of the papers' experiments at CPU scale"),
    "attack": ("probattn.attacks.command", "attack a trained classifier with PWWS and DeepWordBug (offline)"),
    "diagnose": ("probattn.report.diagnose", "measure head collapse, explaining away, misalignment, calibration"),
    "bench": ("probattn.benchmarking", "time attention variants against SDPA"),
    "adapt": ("probattn.hf.adapt_command", "convert a pretrained encoder and distil it back toward the original"),
}


def _chosen_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``probattn`` parser; only ``command``'s module is imported (``--help`` imports none of them)."""
    parser = argparse.ArgumentParser(
        prog="probattn", description="probattn: attention that keeps all its heads useful (doubly-normalized, "
        "repulsive and alignment attention).")
    from probattn import __version__

    parser.add_argument("--version", action="version", version=f"probattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:  # listed in --help without importing it (some need transformers)
            sub.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # an optional extra is missing: say which
            if not exc.name or exc.name.startswith("probattn"):
                raise
            p = sub.add_parser(name, help=help_text)
            p.set_defaults(_missing=exc.name)
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    missing = getattr(args, "_missing", None)
    if missing:
        print(f"probattn {args.command}: needs the package {missing!r}; install it with pip install 'probattn[all]'",
              file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, ImportError, OSError) as exc:  # OSError: disk full, no permission, no file
        if getattr(args, "debug", False):
            raise
        print(f"probattn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
