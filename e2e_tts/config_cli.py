"""``e2e-tts config``: print (and optionally save) the resolved config of YAML files plus overrides."""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from e2e_tts.config import ConfigError, load_config, save_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="print the resolved config of YAML files and key=value overrides")
    parser.add_argument("-c", "--config", action="append", default=[], help="YAML file (repeatable, merged in order)")
    parser.add_argument("--save", help="also write the resolved config to this path")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(config), end="")
    if args.save:
        save_config(config, args.save)
    return 0
