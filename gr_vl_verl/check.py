"""``gr-vl check``: does verl see the plugin?"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("gr-vl check: not implemented yet")
