"""``gr-vl``: one command for the pipeline's steps.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; those
modules import verl/torch inside ``run`` only, so ``gr-vl --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("gr_vl_verl.check", "verify that verl sees the plugin (entry point, reward manager, configs)"),
    "prep": ("gr_vl_verl.data.prep", "turn GuardReasoner-VL corpora into verl SFT / RL parquets and an eval parquet"),
    "demo": ("gr_vl_verl.demo", "run the pipeline end to end on the bundled sample data and a tiny model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gr-vl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
