"""One seeded batch loop for every per-example computation: sampling, the bound and the ODE
likelihood. Example i draws from item i of its stream (``ddpm.seeding``), so its result depends
neither on its batch, nor on the batch size, nor on how the examples are split over torchrun
ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ddpm.progress import OnStep, batch_progress
from ddpm.seeding import Generator, generators


def seeded_batches(indices: Sequence[int], batch_size: int, seed: int, stream: str, device: torch.device | str,
                   on_step: OnStep | None = None) -> Iterator[tuple[list[int], list[Generator], OnStep | None]]:
    """The batches of ``indices``: each batch's items, one generator per item (item i of
    ``stream``), and ``on_step`` rescaled so that it counts the work of all batches."""
    starts = range(0, len(indices), batch_size)
    for batch, start in enumerate(starts):
        chunk = list(indices[start:start + batch_size])
        batch_step = None if on_step is None else batch_progress(on_step, batch, len(starts))
        yield chunk, generators(seed, stream, chunk, device), batch_step
