"""Progress of a long loop as ``on_step(done, total)``: the caller draws a bar or logs, the math
prints nothing. A leaf, so that a module reporting progress depends on nothing else."""

from __future__ import annotations

from collections.abc import Callable

OnStep = Callable[[int, int], None]


def batch_progress(on_step: OnStep, batch: int, num_batches: int) -> OnStep:
    """Report the (done, total) of batch ``batch`` (0-based) as progress over ``num_batches``
    equal batches, so one bar covers a loop over batches."""
    return lambda done, total: on_step(batch * total + done, num_batches * total)
