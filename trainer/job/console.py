"""The main job's console: ONE printer, owned by the job for as long as it runs.

    with console() as printer:            # run_job and the rehearsal; a nested console() is the same printer
        t0 = printer.step("1. data")      # "\n== 1. data"
        log.info("using %s", raw)         # any module of trainer.job: "   using /data/rxrx1"
        printer.done(t0)                  # "   (8.8 s)"

The job's steps report through `logging` (logger `trainer.job.*`), as library code does; the printer is the
handler that shows their INFO and WARNING records on stdout while the job runs, indented under the step header,
and nowhere else (they do not reach the root logger's stderr handler as well). Outside a job (tests, another
program calling a step) the records go wherever that program's logging sends them.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import textwrap
import time
from collections.abc import Iterator

__all__ = ["Printer", "console", "JOB_LOGGER"]

JOB_LOGGER = "trainer.job"
INDENT = "   "


class Printer(logging.Handler):
    """Writes records of the job's loggers, and the step headers and timings, to stdout (looked up at each write,
    so a replaced sys.stdout is followed), flushed at once: a torchrun launched next prints after it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def write(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname}: {text}"
            self.write(textwrap.indent(text, INDENT, lambda line: True))
        except Exception:  # noqa: BLE001 - logging's contract: a handler never raises
            self.handleError(record)

    def step(self, title: str) -> float:
        """A step's header; returns its start time for `done`."""
        self.write(f"\n== {title}")
        return time.perf_counter()

    def done(self, t0: float) -> None:
        self.write(f"{INDENT}({time.perf_counter() - t0:.1f} s)")


@contextlib.contextmanager
def console() -> Iterator[Printer]:
    """The job's printer, attached to the `trainer.job` logger for the block (INFO and up, not propagated to the
    root logger meanwhile); inside a block that has one already, that one."""
    logger = logging.getLogger(JOB_LOGGER)
    attached = next((h for h in logger.handlers if isinstance(h, Printer)), None)
    if attached is not None:
        yield attached
        return
    printer = Printer()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(printer)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield printer
    finally:
        logger.removeHandler(printer)
        logger.setLevel(level)
        logger.propagate = propagate
