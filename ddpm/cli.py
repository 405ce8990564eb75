"""What every stage entry point shares: one clear line for errors a user can cause,
and the exit codes DVC sees."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Callable, Sequence

from ddpm.errors import CheckpointError, ConfigError, DatasetNotFoundError, TrackingError, TrainingDiverged

# Errors with a message meant for the user: printed as one line, no traceback.
USER_ERRORS = (ConfigError, DatasetNotFoundError, CheckpointError, TrackingError, TrainingDiverged,
               FileNotFoundError, ValueError)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(name: str, body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run ``body``; map user errors to exit code 2 and Ctrl-C to 130."""
    args = parser.parse_args(argv)
    # SIGTERM (a killed DVC run, a scheduler's preemption) unwinds like Ctrl-C, so every
    # atomic write in progress removes its temporary file and finished outputs stay intact.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s", stream=sys.stderr)
    try:
        body(args)
    except USER_ERRORS as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(f"{name}: interrupted; outputs already written are complete, nothing half-written was kept",
              file=sys.stderr)
        return 130
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
