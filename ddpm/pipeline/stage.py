"""What every stage entry point shares: one clear line for errors a user can cause,
the pipeline's advice on what to do about them, and the exit codes DVC sees.

The library raises ``ddpm.errors.UserError`` subclasses that say what is wrong; only the
stage edge knows the pipeline, so the advice ("`dvc repro train` writes it") is passed in
here by each stage as ``hints``. Every other exception keeps its traceback: it is a bug,
not a bad parameter.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

from ddpm.errors import UserError

Hints = Mapping[type[UserError], str]


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


@contextlib.contextmanager
def progress_bar(desc: str, unit: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar for the library's ``on_step(done, total)`` callbacks (the math modules
    report progress through a callback and never touch the terminal)."""
    from tqdm.auto import tqdm

    with tqdm(desc=desc, unit=unit, leave=False, mininterval=2.0, disable=not enabled) as bar:
        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield on_step


def user_message(name: str, err: UserError, hints: Hints | None = None) -> str:
    """The one line printed for a user error, with the first matching hint appended."""
    message = f"{name}: error: {err}"
    for kind, hint in (hints or {}).items():
        if isinstance(err, kind):
            return f"{message}\n{name}: hint: {hint}"
    return message


def run_stage(name: str, body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: Sequence[str] | None, hints: Hints | None = None) -> int:
    """Parse ``argv``, run ``body``; map user errors to exit code 2 and Ctrl-C to 130.

    ``hints``: for an error type, what to do about it in this pipeline (printed after the error).
    """
    args = parser.parse_args(argv)
    # SIGTERM (a killed DVC run, a scheduler's preemption) unwinds like Ctrl-C, so every
    # atomic write in progress removes its temporary file and finished outputs stay intact.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s", stream=sys.stderr)
    try:
        body(args)
    except UserError as err:
        print(user_message(name, err, hints), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(f"{name}: interrupted; outputs already written are complete, nothing half-written was kept",
              file=sys.stderr)
        return 130
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
