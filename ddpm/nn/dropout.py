"""Dropout with a faster random mask on the CPU."""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 2**16  # the mask compares one 16-bit uniform per element


def keep_threshold(p: float) -> int:
    """The int16 threshold at or above which an element is kept: drop probability p rounded to
    a multiple of 2**-16 (0.1 -> 6554 / 65536 = 0.1000061)."""
    return round(p * _LEVELS) - _LEVELS // 2


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose training-mode mask on the CPU takes a quarter of the random draws.

    torch's CPU dropout draws one mt19937 number per element (``bernoulli_``). Here each 64-bit
    draw gives four 16-bit uniforms; an element is kept when its uniform is at or above
    :func:`keep_threshold`, so the drop probability is ``p`` rounded to a multiple of 2**-16,
    and kept elements are scaled by 1 / (1 - that probability): the expectation is exact.
    The time saved on a CIFAR-10-size activation is in benchmarks/README.md. Other devices
    (CUDA's fused dropout), eval mode and p = 0 go through ``nn.Dropout``. The draws come from torch's global CPU
    generator, as ``nn.Dropout``'s do, so ``torch.manual_seed`` makes them repeatable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = round(self.p * _LEVELS)  # out of _LEVELS
        if not self.training or x.device.type != "cpu" or dropped in (0, _LEVELS):
            return super().forward(x)  # also p below 2**-17 or above 1 - 2**-17, which 16 bits cannot express
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        uniforms = draws.view(torch.int16)[:n].view(x.shape)
        scale = (uniforms >= keep_threshold(self.p)).to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))
        return x * scale
