"""Variance (beta) schedules for the forward process.

Every schedule returns a float64 tensor ``betas`` of shape [T]; code index ``t`` in
``0..T-1`` stands for the paper's step ``t + 1``. One small function per schedule,
registered in ``SCHEDULES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# Defaults of Ho et al. 2020, Sec. 4: linear betas from 1e-4 to 0.02, T = 1000.
DEFAULT_BETA_START = 1e-4
DEFAULT_BETA_END = 0.02
# Nichol & Dhariwal 2021, Sec. 3.2: offset s and the cap that keeps beta_T < 1.
COSINE_OFFSET = 0.008
MAX_BETA = 0.999
# Sohl-Dickstein et al. 2015's code: the floor on every beta and the first step's extra floor.
SOHL_DICKSTEIN_MIN_BETA = 1e-6
SOHL_DICKSTEIN_STEP1_BETA = 1e-3


def _linear(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def _quadratic(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # Linear in sqrt(beta), as in the DDPM code's "quad" and improved-diffusion.
    return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2


def _cosine(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # Nichol & Dhariwal eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2);
    # beta_t = 1 - abar(t) / abar(t - 1), capped at 0.999 to avoid a singularity at t = T.
    def f(u: np.ndarray) -> np.ndarray:
        return np.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    steps = np.arange(T + 1, dtype=np.float64) / T
    abar = f(steps) / f(np.zeros(1))
    return np.minimum(1 - abar[1:] / abar[:-1], MAX_BETA)


def _sigmoid(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # Sigmoid of linspace(-6, 6, T) rescaled to [beta_start, beta_end] (Swiss-roll seed).
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64)))
    return s * (beta_end - beta_start) + beta_start


def _geometric(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    return np.geomspace(beta_start, beta_end, T, dtype=np.float64)


def _constant(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # The DDPM code's "const" schedule uses beta_end at every step.
    return np.full(T, beta_end, dtype=np.float64)


def _jsd(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # 1/T, 1/(T-1), ..., 1 (Sohl-Dickstein et al. 2015; the DDPM code's "jsd").
    # The last beta is 1, so alphas_cumprod reaches 0 and x_T is exactly N(0, I).
    return 1.0 / np.linspace(T, 1, T, dtype=np.float64)


def _sohl_dickstein(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    # Sohl-Dickstein et al. 2015 (Diffusion-Probabilistic-Models, model.py generate_beta_arr,
    # with its temporal perturbation at zero, which that code never learns): the baseline
    # 1/(T - t + 1) ending at 1/2, so each step destroys a constant fraction of the remaining
    # signal and about 1/T of it is left; floored at 1e-6, with the first step's floor raised by
    # step1_beta = 1e-3, and kept 1e-5 below 1.
    floor = np.full(T, SOHL_DICKSTEIN_MIN_BETA, dtype=np.float64)
    floor[0] += SOHL_DICKSTEIN_STEP1_BETA
    baseline = 1.0 / np.linspace(T, 2.0, T, dtype=np.float64)
    return floor + baseline * (1.0 - floor - 1e-5)


SCHEDULES: dict[str, Callable[[int, float, float], np.ndarray]] = {
    "linear": _linear,
    "quadratic": _quadratic,
    "cosine": _cosine,
    "sigmoid": _sigmoid,
    "geometric": _geometric,
    "constant": _constant,
    "jsd": _jsd,
    "sohl_dickstein": _sohl_dickstein,
}


def get_beta_schedule(
    name: str,
    timesteps: int,
    *,
    beta_start: float = DEFAULT_BETA_START,
    beta_end: float = DEFAULT_BETA_END,
) -> torch.Tensor:
    """Return float64 betas of shape [timesteps] for the schedule ``name``.

    ``beta_start`` and ``beta_end`` are used by linear, quadratic, sigmoid and
    geometric (and beta_end by constant); cosine, jsd and sohl_dickstein have no free range.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"beta_schedule={name!r} is not a known schedule; accepted: {', '.join(SCHEDULES)}"
        )
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps={timesteps!r} must be an integer >= 1")
    for key, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (0.0 < float(value) < 1.0):
            raise ValueError(f"{key}={value!r} must lie in the open interval (0, 1)")
    betas = SCHEDULES[name](timesteps, float(beta_start), float(beta_end))
    return torch.from_numpy(np.ascontiguousarray(betas))
