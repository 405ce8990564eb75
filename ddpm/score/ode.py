"""The probability-flow ODE of a score SDE (Song et al. 2021, eq. 13): sampling and exact
likelihoods.

    dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)                          (``SDE.ode_drift``)

shares its marginals with the SDE, so integrating it from t = 1 (a prior sample) down to eps
samples the model (``ode_sample``; by default followed by score_sde's final denoising step,
``denoise_step``), and integrating it up from data with the instantaneous change of variables
(Chen et al. 2018)

    log p_eps(x(eps)) = log p_1(x(1)) + int_eps^1 div_x (f - 1/2 g^2 s)(x(t), t) dt

gives the model's log-density of x (``log_likelihood``; score_sde's ``likelihood.py``). Note
that this is log p of x at time eps, not of the noiseless data (Kim et al.'s Soft Truncation,
issue #2), and that images need dequantization before it means anything (score_sde #24):
``ode_bpd`` does it and adds the bits/dim offset of this project's data scaling;
``ode_nll`` gives nats/dim for continuous data (the Swiss roll).

Solver: torchode's Dopri5 (the RK45 pair of scipy's default) with an integral step-size
controller, in float64. torchode keeps a step size, an error norm and an accept/reject decision
per example, so an example takes its own steps whatever else is in its batch, and with a score
computed example by example the result is the same up to rounding. scipy's ``solve_ivp``
(score_sde's choice) and torchdiffeq integrate the batch as one system with one shared step
size, chosen from the error norm over all examples: there an image's likelihood moves, within
the tolerance, with the company it keeps. (A float32 network's batched calls still round
differently for different batches; that can move an example's adaptive steps, so its value
can move by about the solver's own error.) The score is called in x's dtype (the
network's); the solver state, the time and the log-density accumulate in float64.

Divergence: exact where the dimension D is at most ``EXACT_DIVERGENCE_MAX_DIM`` (the Swiss
roll's 2 and 8x8 digits' 64), else Hutchinson-Skilling's unbiased estimate eps^T J eps with a
Rademacher probe per example, drawn once from its generator and held fixed along the path
(score_sde). The exact trace sends D copies of each example through the network with one-hot
cotangents and one backward pass: plain autograd, so any score callable works (torch.func's
jacrev + vmap needs batching rules that, for instance, CPU attention lacks, and then falls back
to a per-example loop). NFE counts evaluations of the ODE's right-hand side, as score_sde does;
an exact-divergence evaluation costs a network pass on D rows per example, so at D = 64 it is
far dearer than Hutchinson's one row (``benchmarks/ode_likelihood.py`` has the figures).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddpm.errors import EvaluationError
from ddpm.seeding import Generator, rand

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

EXACT_DIVERGENCE_MAX_DIM = 64  # the default: exact trace up to this data dimension, Hutchinson above
MAX_STEPS = 10_000             # solver steps (accepted or rejected) before an example is declared stuck

# Dopri5 is first-same-as-last: the controller's initial step selection evaluates the field
# twice (its first evaluation is reused), then every attempted step costs 6 new evaluations.
_INITIAL_EVALS, _EVALS_PER_STEP = 2, 6


def check_solver_args(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:  # also rejects NaN
            raise ValueError(f"{name}={value!r} must be positive")
    eps = values.get("eps")
    if eps is not None and not eps < 1:
        raise ValueError(f"eps={eps!r} must lie in (0, 1): the ODE runs between eps and T = 1")


def _rademacher(shape: Sequence[int], generator: Generator, device: torch.device, dtype: torch.dtype
                ) -> torch.Tensor:
    """+-1 with probability 1/2 each, per example when ``generator`` is a list."""
    u = rand(shape, generator, device)
    return torch.where(u < 0.5, -1.0, 1.0).to(dtype)


def _drift_and_divergence(sde: Any, score: Score, x: torch.Tensor, t: torch.Tensor,
                          probe: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability-flow drift [B, ...] and its divergence [B]: exact for ``probe=None``,
    else Hutchinson's probe^T J probe."""
    with torch.enable_grad():
        if probe is not None:
            xg = x.detach().requires_grad_(True)
            drift = sde.ode_drift(xg, t, score)
            (vjp,) = torch.autograd.grad(drift, xg, probe)
            return drift.detach(), (vjp * probe).flatten(1).sum(1)
        B, D = x.shape[0], x[0].numel()
        # Row b * D + i is a copy of example b whose cotangent is e_i: its gradient is row i of
        # example b's Jacobian, whose entry i is a diagonal term of the trace.
        xr = x.detach().repeat_interleave(D, dim=0).requires_grad_(True)
        drift = sde.ode_drift(xr, t.repeat_interleave(D), score)
        basis = torch.eye(D, dtype=x.dtype, device=x.device).repeat(B, 1).reshape(xr.shape)
        (rows,) = torch.autograd.grad(drift, xr, basis)
    divergence = rows.reshape(B, D, D).diagonal(dim1=1, dim2=2).sum(1)
    return drift.detach().reshape(B, D, *x.shape[1:])[:, 0], divergence


def _chunked(fn: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], batch: int, per_call: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` on consecutive example slices of at most ``per_call`` rows, concatenated."""
    parts = [fn(slice(s, s + per_call)) for s in range(0, batch, per_call)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def solve(rhs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: torch.Tensor, t_start: float,
           t_end: float, rtol: float, atol: float, t_eval: torch.Tensor | None = None
           ) -> tuple[Any, torch.Tensor, int]:
    """Dopri5 with an integral controller on the float64 state ``y0`` [B, F], each example
    with its own steps. Returns the solution, NFE per example [B] and the batched calls made."""
    import torchode  # here, not at the top: its start-up is no cost to stages that never solve an ODE

    term = torchode.ODETerm(rhs)
    controller = torchode.IntegralController(atol=atol, rtol=rtol, term=term).double()
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), controller, max_steps=MAX_STEPS)
    B = y0.shape[0]
    times = [torch.full((B,), t, dtype=torch.float64, device=y0.device) for t in (t_start, t_end)]
    sol = solver.solve(torchode.InitialValueProblem(y0, *times, t_eval=t_eval))
    failed = (sol.status != torchode.Status.SUCCESS.value).nonzero().flatten().tolist()
    if failed:
        codes = sorted({torchode.Status(int(sol.status[i])).name for i in failed})
        raise EvaluationError(
            f"the probability-flow ODE solver stopped ({', '.join(codes)}) for examples {failed[:8]}: "
            f"non-finite scores, or rtol={rtol:g}, atol={atol:g} too tight for {MAX_STEPS} steps")
    nfe = _INITIAL_EVALS + _EVALS_PER_STEP * sol.stats["n_steps"].cpu()
    return sol, nfe, int(sol.stats["n_f_evals"].max())


@torch.no_grad()
def log_likelihood(sde: Any, score: Score, x: torch.Tensor, *, eps: float = 1e-5, rtol: float = 1e-5,
                   atol: float = 1e-5, exact_divergence: bool | None = None, generator: Generator = None,
                   max_batch: int = 1024) -> dict[str, Any]:
    """The log-density of each example of ``x`` under the probability-flow ODE model of
    ``sde`` and ``score`` (integrated from ``eps`` to 1), in nats summed over dimensions.

    ``exact_divergence``: None = exact when D <= ``EXACT_DIVERGENCE_MAX_DIM``, else Hutchinson
    with a Rademacher probe per example from ``generator`` (one generator per example makes
    each result independent of the batch). ``max_batch`` caps the rows of one score call
    (the exact divergence sends D copies of each example).

    Returns ``logp`` = ``prior_logp`` + ``delta_logp`` [B] (float64), ``z`` [B, ...] (float64,
    the state at t = 1), ``nfe`` (LongTensor [B], right-hand-side evaluations each example's
    solve needed), ``nfe_total`` (batched evaluations made; the batch is evaluated as a whole
    until its slowest example is done) and ``exact_divergence`` (the choice made).
    """
    check_solver_args(eps=eps, rtol=rtol, atol=atol, max_batch=max_batch)
    B, D = x.shape[0], x[0].numel()
    exact = D <= EXACT_DIVERGENCE_MAX_DIM if exact_divergence is None else bool(exact_divergence)
    probe = None if exact else _rademacher(x.shape, generator, x.device, x.dtype)
    per_call = max(1, max_batch // D) if exact else max_batch

    def rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = y[:, :D].reshape(x.shape).to(x.dtype)
        drift, div = _chunked(lambda s: _drift_and_divergence(
            sde, score, state[s], t[s], None if probe is None else probe[s]), B, per_call)
        return torch.cat([drift.reshape(B, D).to(torch.float64), div.to(torch.float64)[:, None]], dim=1)

    y0 = torch.cat([x.reshape(B, D).to(torch.float64), x.new_zeros((B, 1), dtype=torch.float64)], dim=1)
    sol, nfe, nfe_total = solve(rhs, y0, eps, 1.0, rtol, atol)
    y1 = sol.ys[:, -1]
    z = y1[:, :D].reshape(x.shape)
    prior_logp = sde.prior_logp(z).to(torch.float64)
    delta_logp = y1[:, D]
    return {"logp": prior_logp + delta_logp, "prior_logp": prior_logp, "delta_logp": delta_logp, "z": z,
            "nfe": nfe, "nfe_total": nfe_total, "exact_divergence": exact}


def dequantization_offset(num_levels: int) -> float:
    """Bits/dim to add to -log2 p / D of uniformly dequantized data on this project's grid
    x = 2 v / (K - 1) - 1: a bin of width Delta = 2 / (K - 1) has mass ~ p Delta per dimension,
    so the offset is -log2 Delta = log2((K - 1) / 2). That is 3 for digits (K = 17) and 6.994
    for 8-bit data; score_sde's +7 assumes its own (255 v + U) / 256 scaling (its issue #51)."""
    return math.log2((num_levels - 1) / 2)


def _check_on_grid(x: torch.Tensor, num_levels: int) -> None:
    """Refuse data that are not grey levels: dequantized (or continuous) input would be
    dequantized twice, and its bits/dim would mean nothing."""
    if x.numel() == 0:
        return
    levels = (x.to(torch.float64) + 1) * (num_levels - 1) / 2
    off = (levels - levels.round()).abs().max().item()
    low, high = levels.min().item(), levels.max().item()
    if off > 1e-3 or low < -1e-3 or high > num_levels - 1 + 1e-3:
        raise ValueError(f"ode_bpd needs x on the {num_levels}-level grid in [-1, 1] (x = 2 v / (K - 1) - 1; it "
                         f"dequantizes itself): got values up to {off:.3g} bins off the grid, levels "
                         f"{low:.3g}..{high:.3g}")


def ode_bpd(sde: Any, score: Score, x: torch.Tensor, num_levels: int, *, repeats: int = 1,
            generator: Generator = None, eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5,
            exact_divergence: bool | None = None, max_batch: int = 1024) -> dict[str, Any]:
    """Bits/dim of images ``x`` on the ``num_levels``-level grid in [-1, 1] under the ODE
    model, with uniform dequantization x + Delta (u - 1/2), Delta = 2 / (K - 1), u ~ U[0, 1)^D
    drawn per example and repeat from ``generator`` (then the Hutchinson probe, if any):

        bpd = -log p(x + Delta (u - 1/2)) / (D ln 2) + log2((K - 1) / 2),

    an upper bound on the discrete data's bits/dim (Jensen), averaged over ``repeats``
    (score_sde's test bpd uses 5). Solver keywords as in ``log_likelihood``.

    Returns ``bpd`` [B] (float64), ``bpd_repeats`` [B, repeats], ``nfe`` (LongTensor [B], summed
    over repeats), ``nfe_total`` (batched evaluations over all repeats) and the settings behind
    the number: ``num_levels``, ``repeats``, ``eps``, ``rtol``, ``atol``, ``exact_divergence``.
    """
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels={num_levels!r} must be an integer >= 2")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an integer >= 1")
    check_solver_args(eps=eps, rtol=rtol, atol=atol)
    _check_on_grid(x, num_levels)
    delta = 2.0 / (num_levels - 1)
    D = x[0].numel()
    bpds, nfe, nfe_total, exact = [], torch.zeros(x.shape[0], dtype=torch.long), 0, None
    for _ in range(repeats):
        u = rand(x.shape, generator, x.device, x.dtype)
        out = log_likelihood(sde, score, x + delta * (u - 0.5), eps=eps, rtol=rtol, atol=atol,
                             exact_divergence=exact_divergence, generator=generator, max_batch=max_batch)
        bpds.append(-out["logp"].cpu() / (D * math.log(2)) + dequantization_offset(num_levels))
        nfe, nfe_total, exact = nfe + out["nfe"], nfe_total + out["nfe_total"], out["exact_divergence"]
    per_repeat = torch.stack(bpds, dim=1)
    return {"bpd": per_repeat.mean(1), "bpd_repeats": per_repeat, "nfe": nfe, "nfe_total": nfe_total,
            "num_levels": num_levels, "repeats": repeats, "eps": eps, "rtol": rtol, "atol": atol,
            "exact_divergence": exact}


def ode_nll(sde: Any, score: Score, x: torch.Tensor, *, generator: Generator = None, eps: float = 1e-5,
            rtol: float = 1e-5, atol: float = 1e-5, exact_divergence: bool | None = None,
            max_batch: int = 1024) -> dict[str, Any]:
    """Nats/dim -log p(x) / D of continuous data (the Swiss roll) under the ODE model: no
    dequantization and no offset. Returns ``nll`` [B] (float64), ``nfe``, ``nfe_total`` and the
    solver settings, like ``ode_bpd``."""
    out = log_likelihood(sde, score, x, eps=eps, rtol=rtol, atol=atol, exact_divergence=exact_divergence,
                         generator=generator, max_batch=max_batch)
    return {"nll": -out["logp"].cpu() / x[0].numel(), "nfe": out["nfe"], "nfe_total": out["nfe_total"],
            "eps": eps, "rtol": rtol, "atol": atol, "exact_divergence": out["exact_divergence"]}
