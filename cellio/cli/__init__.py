"""`cellio` command line. Each command lives in its own module under cellio/cli/ and exposes

    HELP: str                                  one line for `cellio --help`
    def add_arguments(parser) -> None          its flags
    def run(args) -> int | None                does the work (library calls only)

so commands stay independent. CellioError becomes a one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import CellioError

# command name -> module (in cellio.cli); order is the order in --help
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "metadata": "metadata",
    "download": "download",
    "ingest": "ingest",
    "inspect": "inspect",
    "show": "show",
    "submit": "submit",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where X says something: not for None, not for on/off flags (whose default is
    just "not given"), and not where the help text already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "default" in text:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellio", description="RxRx1 cell images into a trained model fast.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(f"cellio.cli.{modname}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)  # INFO by default on the CLI, DEBUG with -v
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except CellioError as exc:
        print(f"cellio {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellio {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
