"""gr-vl: one command for each step of the GuardReasoner-VL pipeline.

This module only dispatches: ``gr-vl NAME`` runs ``gr_vl_verl.commands.NAME`` (see that package for the
contract every command follows) and turns its :class:`~gr_vl_verl.commands.CommandError` into one line on
stderr and the error's exit code. While a command runs, stdout carries its output only (``commands.emit``);
everything else, logs of the libraries and of every child process included, goes to stderr
(:mod:`gr_vl_verl.stdio`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType
from typing import NoReturn

from gr_vl_verl import commands
from gr_vl_verl.commands import CommandError
from gr_vl_verl.stdio import results_stdout, stdout_to_stderr_for_good

#: Help lists commands in pipeline order; any other command module follows, alphabetically.
PIPELINE_ORDER = ("prep", "generate", "mine", "augment", "eval", "score", "classify", "serve", "demo", "check")


def command_names() -> list[str]:
    """Every ``gr-vl`` command, from the modules in ``gr_vl_verl/commands``."""
    found = {m.name.replace("_", "-") for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    return [n for n in PIPELINE_ORDER if n in found] + sorted(found - set(PIPELINE_ORDER))


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"{commands.__name__}.{name.replace('-', '_')}")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line, as the commands' own are: the problem, then where the flags are
    listed. (argparse prints the whole usage first, a dozen lines for ``gr-vl prep``, burying the problem.)
    Sub-command parsers are of this class too: ``add_subparsers`` builds them with the parent's class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="gr-vl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_names():
        module = command_module(name)
        help_text = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad flags: one line on stderr, SystemExit(2)
    try:
        with results_stdout():
            return int(command_module(args.command).run(args) or 0)
    except CommandError as e:
        print(f"gr-vl {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # the reader of stdout went away (`gr-vl classify ... | head -1`)
        print(f"gr-vl {args.command}: error: stdout was closed before all output was written", file=sys.stderr)
        return 1


def entry() -> None:
    """The ``gr-vl`` executable: :func:`main`, then leave without the interpreter's teardown if Ray ran here.

    After ``ray.shutdown()`` Ray's native gRPC and event threads can still be alive while the interpreter tears
    itself down, a race that can end a successful run in a segmentation fault. Once the command is done and the
    output flushed, nothing is left for the teardown to do, so the process ends at once with the command's code.
    """
    code = main()
    stdout_to_stderr_for_good()  # what interpreter exit sets off (atexit, a library's farewell) is not output
    if "ray" in sys.modules:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
