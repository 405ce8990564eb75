"""Torch generators and noise for the random streams of ``ddpm.streams`` (a leaf module: it
imports nothing from ``ddpm`` but ``ddpm.streams``). ``STREAMS`` and ``stream_seed`` are
re-exported here, where the library has always found them.

Item ``i`` of a stream gets its own generator, seeded with ``stream_seed(seed, stream, i)``:
sample ``i`` is the same whatever batch it is drawn in (EDM's per-sample streams).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm.streams import STREAMS, stream_seed

__all__ = ["STREAMS", "Generator", "StepNoise", "generator", "generators", "rand", "randn", "stream_seed"]

Generator = torch.Generator | Sequence[torch.Generator] | None


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
