"""Noise schedules: DDPM's discrete betas, a continuous SDE's kernel and g(t), NCSN's sigma ladder."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ddpm.plotting._common import DPI, SAMPLE_COLOR, ArrayLike, _to_numpy


def schedule_figure(betas: ArrayLike) -> Figure:
    """A noise schedule: ``beta_t``, ``alphas_cumprod`` (abar_t) and log SNR vs ``t``.

    Args:
        betas: ``[T]`` (float64), ``betas[i]`` is the paper's ``beta_{i+1}``.
    """
    betas = _to_numpy(betas)
    if betas.ndim != 1 or len(betas) == 0:
        raise ValueError(f"betas must be a non-empty 1-D array [T], got shape {tuple(betas.shape)}")
    if not np.all((betas > 0) & (betas <= 1)):
        raise ValueError(f"betas must lie in (0, 1], got min {betas.min()!r}, max {betas.max()!r}")
    t = np.arange(1, len(betas) + 1)
    alphas_cumprod = np.cumprod(1.0 - betas)
    with np.errstate(divide="ignore"):
        log_snr = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)  # log(abar / (1 - abar))

    fig = Figure(figsize=(12.0, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (betas, r"$\beta_t$", r"noise variance $\beta_t$"),
        (
            alphas_cumprod,
            r"$\bar\alpha_t$ (cumulative product of $1-\beta_s$)",
            r"signal variance fraction $\bar\alpha_t$",
        ),
        (log_snr, r"$\log \mathrm{SNR}_t$", r"$\log(\bar\alpha_t / (1-\bar\alpha_t))$ (nats)"),
    ]
    for ax, (values, title, ylabel) in zip(axes, panels, strict=True):
        ax.plot(t, values, color=SAMPLE_COLOR, linewidth=1.8)
        ax.set_title(title)
        ax.set_xlabel(r"timestep $t$ (1..T)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.25)
    axes[1].set_ylim(-0.03, 1.03)
    axes[2].axhline(0.0, color="0.5", linewidth=0.8, linestyle="--")
    fig.suptitle(rf"Noise schedule (T = {len(betas)}, $\bar\alpha_T$ = {alphas_cumprod[-1]:.2e})")
    return fig


def sde_schedule_figure(t: ArrayLike, mean_coef: ArrayLike, std: ArrayLike, diffusion: ArrayLike, title: str) -> Figure:
    """A continuous-time SDE's schedule against t in [0, 1]: the perturbation kernel
    N(mean_coef(t) x0, std(t)^2 I) and the diffusion coefficient g(t), std and g on a log axis."""
    t, mean_coef, std, g = (_to_numpy(a).reshape(-1) for a in (t, mean_coef, std, diffusion))
    if not len(t) == len(mean_coef) == len(std) == len(g) > 1:
        raise ValueError("t, mean_coef, std and diffusion must be 1-D arrays of the same length > 1")
    fig = Figure(figsize=(12.0, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (mean_coef, "mean coefficient of $x_0$", False),
        (std, r"std $\sigma(t)$ of the noise", True),
        (g, "diffusion coefficient $g(t)$", True),
    ]
    for ax, (values, name, log) in zip(axes, panels, strict=True):
        ax.plot(t, values, color=SAMPLE_COLOR, linewidth=1.8)
        ax.set_title(name)
        ax.set_xlabel("time t")
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.25)
    fig.suptitle(title)
    return fig


def sigma_ladder_figure(sigmas: ArrayLike) -> Figure:
    """NCSN's noise levels (descending; level 0 the largest) on a log axis, with their ratio."""
    sigmas = _to_numpy(sigmas).reshape(-1)
    if len(sigmas) < 2 or not np.all(sigmas > 0):
        raise ValueError(f"sigmas must hold at least 2 positive levels, got {sigmas.tolist()[:4]}")
    fig = Figure(figsize=(6.5, 3.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.semilogy(np.arange(len(sigmas)), sigmas, "o-", color=SAMPLE_COLOR, markersize=3, linewidth=1.2)
    ax.set_xlabel("level i (annealed Langevin dynamics runs from 0 to L-1)")
    ax.set_ylabel(r"noise level $\sigma_i$")
    ax.grid(True, which="both", alpha=0.25)
    gamma = (sigmas[0] / sigmas[-1]) ** (1 / (len(sigmas) - 1))
    ax.set_title(
        rf"NCSN noise levels: L = {len(sigmas)}, $\sigma_1$ = {sigmas[0]:.4g}, "
        rf"$\sigma_L$ = {sigmas[-1]:.3g}, ratio {gamma:.4g}"
    )
    return fig
