"""The ``e2e-tts`` command line: one subcommand per job, each registered by the module that does it."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Modules that provide `register(subparsers)`; each adds one subcommand and sets `func`.
COMMAND_MODULES = (
    "e2e_tts.data.corpus",
    "e2e_tts.data.shards",
    "e2e_tts.train",
    "e2e_tts.synth_cli",
    "e2e_tts.eval.cli",
    "e2e_tts.eval.report",
    "e2e_tts.config_cli",
    "e2e_tts.hf_export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2e-tts", description="Train and evaluate end-to-end discrete-token TTS.")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
