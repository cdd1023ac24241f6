"""`cellio` command line. Each command lives in its own module under cellio/cli/ and exposes

    HELP: str                                  one line for `cellio --help`
    def add_arguments(parser) -> None          its flags
    def run(args) -> int | None                does the work (library calls only)
    INTERRUPTED: str (optional)                what to tell the user after Ctrl-C (e.g. "rerun to resume")

so commands stay independent. CellioError becomes a one-line message and exit code 2; Ctrl-C exit code 130;
a closed stdout (`cellio inspect | head`) ends quietly.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import CellioError

# command name -> module (in cellio.cli); order is the order in --help
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "metadata": "metadata",
    "download": "download",
    "ingest": "ingest",
    "inspect": "inspect",
    "verify": "verify",
    "show": "show",
    "export": "export",
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
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a reader that went away (`| head`) shows up here, not at interpreter exit
        return rc
    except CellioError as exc:
        print(f"cellio {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(importlib.import_module(args._run.__module__), "INTERRUPTED", "")
        print(f"cellio {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader closed stdout: stop quietly, as `head` expects; point stdout at /dev/null so the
        # interpreter's final flush does not raise again (Python docs, "Note on SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
