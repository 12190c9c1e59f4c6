"""The ``anomalib-wsi`` command: synth, tile, predict, export, evaluate, demo, benchmark, stain.

Sub-commands are built with jsonargparse, as anomalib's own CLI is: one module of this package per command, each
with ``parser()`` and ``run(**options)``, a thin layer over a Python function whose heavy imports happen only when
the command runs, so that ``anomalib-wsi --help`` stays fast.

A user mistake (a :class:`~anomalib_wsi.errors.WSIError`: a bad file, option or checkpoint) prints one line and
exits with status 2, never a traceback. Anything else is a bug: one line saying so and exit status 1, with the
traceback under ``--debug`` (or ``ANOMALIB_WSI_DEBUG=1``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from jsonargparse import ArgumentParser

from anomalib_wsi.errors import WSIError

__all__ = ["COMMANDS", "build_parser", "main"]


#: The sub-commands, each a module of this package with ``parser()`` and ``run(**options)``.
COMMANDS = ("synth", "tile", "predict", "export", "evaluate", "demo", "benchmark", "stain")


def build_parser() -> ArgumentParser:
    """The ``anomalib-wsi`` parser with one sub-command per entry of the command table."""
    parser = ArgumentParser(prog="anomalib-wsi", description="Whole-slide metastasis detection with anomalib.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error (also ANOMALIB_WSI_DEBUG=1)"
    )
    subcommands = parser.add_subcommands(dest="command")
    for name in COMMANDS:
        sub = importlib.import_module(f"anomalib_wsi.cli.{name}").parser()
        subcommands.add_subcommand(name, sub, help=sub.description)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (0 ok, 1 some slides failed, 2 user error)."""
    # deprecation notices that anomalib 2.7's own imports print on every run: noise above a command's one-line error
    for message in (r"Importing from timm\.models\.layers is deprecated", r"The anomalib\.models\.components\.dinov2"):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    parser = build_parser()
    cfg = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.DEBUG if cfg.verbose else logging.INFO, format="%(levelname)s %(message)s")
    name = cfg.command
    options: dict[str, Any] = {k.replace("-", "_"): v for k, v in dict(cfg[name]).items() if k != "__path__"}
    try:
        status = importlib.import_module(f"anomalib_wsi.cli.{name}").run(**options)
    except WSIError as err:
        print(f"anomalib-wsi {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"anomalib-wsi {name}: interrupted; outputs written so far are kept", file=sys.stderr)
        return 130
    except Exception as err:
        if cfg.debug or os.environ.get("ANOMALIB_WSI_DEBUG", "") not in {"", "0"}:
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(
            f"anomalib-wsi {name}: unexpected error ({type(err).__name__}: {first}); this is a bug, not your input: "
            "run again with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
