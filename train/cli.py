"""What the command lines share: expected errors (bad paths, files, options) as one line and exit code 2.

A traceback is for a bug; ``--debug`` shows it for the expected errors too.
"""
from __future__ import annotations

import argparse
import sys

from .inception import InceptionUnavailable

EXPECTED = (ValueError, OSError, InceptionUnavailable)   # OSError covers FileNotFoundError, PermissionError


class Parser(argparse.ArgumentParser):
    """argparse with CUT's defaults shown in --help, whose usage errors are one line (no usage block)."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")


def add_no_ema_flag(parser) -> None:
    """--no_ema: a folder's raw generator weights instead of its EMA ones (qsattn-translate, qsattn-viz)."""
    parser.add_argument("--no_ema", action="store_true",
                        help="in a folder: the raw weights (<which>_net_G.pth) even where the EMA ones "
                             "(<which>_net_G_ema.pth, the default) are there")


def one_line_errors(prog: str, work, debug: bool = False, codes: dict | None = None) -> int:
    """``work()``'s exit code; an :data:`EXPECTED` error is printed as ``<prog>: error: <message>`` and
    gives 2, or ``codes[type]`` for an error of a type in ``codes`` (re-raised with ``debug``)."""
    try:
        return work()
    except EXPECTED as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return next((code for kind, code in (codes or {}).items() if isinstance(e, kind)), 2)
