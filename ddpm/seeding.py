"""Every random stream of a run, derived from the run's seed in one place (a leaf module:
it imports nothing from ``ddpm``).

A stream is named (``STREAMS``) and may be keyed (a torchrun rank); it holds items
0, 1, 2, ... (sample ``i``, training step ``s``). Its base seed comes from NumPy's
``SeedSequence`` with the stream's id and key as spawn key, so different seeds, streams and
keys never share a base by construction (only by a 2**-63 hash accident); item ``i``'s seed
is the base plus ``i``.

Why "plus i" and not one hash per item: torch's CPU generator (mt19937) keeps only the low 32
bits of a seed, so per-item hashes would collide by the birthday bound (about 40% for 60,000
samples). Consecutive seeds never collide within a stream, and two streams overlap only when
their 32-bit bases fall within the number of items of each other (about n / 2**32).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

# Stream ids are part of every seed: append new streams, never reorder or reuse an id.
STREAMS: dict[str, int] = {
    "init": 0,          # the network's initial weights
    "data_order": 1,    # item: epoch -> the permutation of the training set
    "train_noise": 2,   # item: step -> timesteps, noise and flips of the global batch
    "dropout": 3,       # key: rank; item: step
    "sample": 4,        # item: sample index
    "bound": 5,         # item: test example index (the bound's x_t draws)
    "metrics": 6,       # subsets and projections of the sample-quality metrics
    "bound_curve": 7,   # item: test example index (the learning curve's bound estimates)
    "classifier": 8,    # key 0: the feature classifier's initial weights; key 1, item: epoch -> its data order
    "data_split": 9,    # the random train/test split of a dataset prepared from files (an image folder)
    "ode_likelihood": 10,  # item: test example index (the ODE likelihood's dequantization and Hutchinson probe)
}

_SEED_SPACE = 2**63  # torch.manual_seed accepts any non-negative int64


Generator = torch.Generator | Sequence[torch.Generator] | None


def stream_seed(seed: int, stream: str, item: int = 0, key: Sequence[int] = ()) -> int:
    """The seed of ``item`` of ``stream`` (optionally keyed, e.g. by rank) for run ``seed``."""
    if int(item) < 0:
        raise ValueError(f"item must be >= 0, got {item}")
    return (_stream_base(int(seed), stream, tuple(int(k) for k in key)) + int(item)) % _SEED_SPACE


@functools.lru_cache(maxsize=256)
def _stream_base(seed: int, stream: str, key: tuple[int, ...]) -> int:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    if seed < 0 or any(k < 0 for k in key):
        raise ValueError(f"seed and key must be >= 0, got seed={seed}, key={key}")
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(STREAMS[stream], *key))
    return int(sequence.generate_state(1, np.uint64)[0]) % _SEED_SPACE


def generator(seed: int, stream: str, item: int = 0, key: Sequence[int] = (),
              device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded for ``item`` of ``stream``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, item, key))


def generators(seed: int, stream: str, items: Sequence[int] | range, device: torch.device | str = "cpu"
               ) -> list[torch.Generator]:
    """One generator per item (EDM's per-sample streams): sample ``i`` is the same whatever
    batch it is drawn in, whatever the batch size and however the items are split over ranks."""
    return [generator(seed, stream, i, device=device) for i in items]


def randn(shape: Sequence[int], generator: Generator, device: torch.device | str,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator``; a sequence of generators
    draws example ``b`` of the batch from ``generator[b]`` (EDM's StackedRandomGenerator)."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(shape: Sequence[int], generator: Generator, device: torch.device | str,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape``, per example like :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)


def _draw(fn, shape: Sequence[int], generator: Generator, device: torch.device | str,
          dtype: torch.dtype) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return fn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([fn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


class StepNoise:
    """Standard normal noise of ``shape`` (a batch) for steps 0, 1, 2, ... (the bound's timesteps),
    drawn ``block`` steps at a time: one draw per example and block, instead of one per example
    and step (on CUDA a launch each, which cost the full bound more than its network calls).

    With a sequence of generators, example ``b``'s noise for every step comes from
    ``generator[b]`` alone, in step order, so it depends neither on the batch the example is in
    nor on how the caller groups steps into calls (``take`` may cut anywhere): only on ``block``,
    which the caller fixes from the example's shape. ``take(start, stop)`` returns the noise of
    steps ``start .. stop - 1``, step-major ``[stop - start, *shape]``; steps are taken in order.
    """

    def __init__(self, shape: Sequence[int], generator: Generator, device: torch.device | str,
                 dtype: torch.dtype, block: int) -> None:
        if block < 1:
            raise ValueError(f"block={block} must be >= 1")
        if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        self.shape, self.generator, self.device, self.dtype, self.block = tuple(shape), generator, device, dtype, block
        self._buffer = torch.empty((0, *self.shape), device=device, dtype=dtype)
        self._start = 0  # the step of _buffer[0]

    def _draw_block(self) -> torch.Tensor:
        size = (self.block, *self.shape)
        g = self.generator
        if g is None or isinstance(g, torch.Generator):
            return torch.randn(size, generator=g, device=self.device, dtype=self.dtype)
        return torch.stack([torch.randn((self.block, *self.shape[1:]), generator=gb, device=self.device,
                                        dtype=self.dtype) for gb in g], dim=1)

    def take(self, start: int, stop: int) -> torch.Tensor:
        if start != self._start:
            raise ValueError(f"steps are taken in order: expected step {self._start}, got {start}")
        while self._buffer.shape[0] < stop - start:
            self._buffer = torch.cat([self._buffer, self._draw_block()])
        out, self._buffer = self._buffer[:stop - start], self._buffer[stop - start:]
        self._start = stop
        return out
