"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1), NCSN's sampler, with NCSNv2's
final denoising step. Level ``i`` is the paper's sigma_{i+1} (level 0 the largest noise), as
in ``ddpm.score.ncsn``, which holds the ladder, the objective and NCSNv2's rules. The sampler
follows ``ddpm.sampling.contract``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import get_args

import torch

from ddpm.progress import OnStep
from ddpm.sampling.contract import OnState, StateReporter
from ddpm.score.ncsn import Init, LevelScore, check_int, check_positive, checked_sigmas
from ddpm.seeding import Generator, rand, randn


def _ald_init(init: str, shape: Sequence[int], sigma_max: float, generator: Generator,
              device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    if init == "uniform":
        return 2 * rand(shape, generator, device, dtype) - 1
    if init == "gaussian":
        return sigma_max * randn(shape, generator, device, dtype)
    raise ValueError(f"init={init!r} is not accepted; accepted: {', '.join(get_args(Init))}")


@torch.no_grad()
def ald_sample(score: LevelScore, sigmas: torch.Tensor | Sequence[float], shape: Sequence[int], *,
               steps_per_level: int = 100, step_lr: float = 2e-5, denoise: bool = True, init: Init = "uniform",
               generator: Generator = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               on_step: OnStep | None = None, states: Sequence[int] | None = None,
               on_state: OnState | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1; NCSNv2's final denoising).

    Starts from U[-1, 1] (``init="uniform"``: the references' U[0, 1] in their [0, 1] scaling)
    or N(0, sigma_1^2 I) (``"gaussian"``). For each level i, ``steps_per_level`` steps
    x <- x + alpha_i s(x, i) + sqrt(2 alpha_i) z with alpha_i = step_lr sigma_i^2 / sigma_L^2;
    then, with ``denoise``, x <- x + sigma_L^2 s(x, L-1) (Tweedie's formula at the last level).
    Defaults are NCSN's (T = 100, eps = 2e-5, no denoising there); NCSNv2 uses
    ``ncsnv2_settings``. Noise comes from ``generator`` (one per example: example b's sample
    does not depend on its batch).

    Returns the samples. ``on_state(level, x)`` receives the states ``states`` (default: all) in
    order: level -1 is the initial state, i in 0..L-1 the state after level i's Langevin steps,
    L the denoised sample (only with ``denoise``). The NFE, L T (plus 1 with ``denoise``), is
    the calls of a ``CountingScore`` passed as ``score``; ``on_step(done, total)`` follows them.
    """
    table = checked_sigmas(sigmas)
    steps = check_int("steps_per_level", steps_per_level, 1)
    step_lr = check_positive("step_lr", step_lr)
    L, B = len(table), shape[0]
    report = StateReporter(on_state, states, range(-1, L + int(denoise)), "trajectory levels")
    total = L * steps + int(denoise)
    # alpha_i = eps sigma_i^2 / sigma_L^2 in float64 (NCSN Algorithm 1, line 3).
    alphas = (step_lr * (table / table[-1]) ** 2).tolist()
    x = _ald_init(init, shape, table[0].item(), generator, device, dtype)
    report(-1, x)
    done = 0
    for i in range(L):
        level = torch.full((B,), i, dtype=torch.long, device=device)
        for _ in range(steps):
            # Algorithm 1, line 6, in the references' code form (NCSNv2's Algorithm 1); NCSN's
            # paper writes alpha_i / 2 s + sqrt(alpha_i) z, whose alpha_i is twice this one.
            z = randn(shape, generator, device, dtype)
            x = x + alphas[i] * score(x, level).to(dtype) + math.sqrt(2 * alphas[i]) * z
            done += 1
            if on_step is not None:
                on_step(done, total)
        report(i, x)
    if denoise:
        level = torch.full((B,), L - 1, dtype=torch.long, device=device)
        x = x + table[-1].item() ** 2 * score(x, level).to(dtype)
        if on_step is not None:
            on_step(total, total)
        report(L, x)
    return x
