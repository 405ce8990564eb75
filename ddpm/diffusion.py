"""Gaussian diffusion (Ho et al. 2020): forward process, posterior, reverse process,
training losses and the full variational bound.

Index convention (stated once): code index ``t`` in ``0..T-1`` stands for the paper's
step ``t + 1``. So ``betas[t]`` is the paper's beta_{t+1}, ``alphas_cumprod[t]`` is
abar_{t+1}, ``x_t`` in code is the paper's x_{t+1}, and the reverse step at code ``t``
maps x_{t+1} to x_t (paper). ``terms[:, 0]`` of the bound is the decoder term L_0.

Every table is computed once in float64 and gathered at ``t`` before being cast to the
working dtype (``extract``). The network may run in low precision; this module never
does: model outputs are cast up before they enter the math, and the bound is computed
in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch

from ddpm.likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    mean_flat,
    nats_to_bits,
    normal_kl,
)
from ddpm.progress import OnStep, batch_progress  # noqa: F401 (ddpm.diffusion's public names)
from ddpm.seeding import Generator, StepNoise, rand, randn

MeanType = Literal["eps", "x0", "v"]
VarType = Literal["fixed_small", "fixed_large", "learned_range"]
LossType = Literal["simple", "vlb", "hybrid"]
LossNorm = Literal["l2", "l1"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The full bound draws each example's x_t noise this many values at a time (float64: 512 KiB per
# example): a block of min(T, 2**16 // D) timesteps per draw, fixed by the example's size and T
# alone, so the noise does not depend on the batch or on the timesteps per network call.
BOUND_NOISE_BLOCK_VALUES = 2**16


def _check_choice(key: str, value: Any, literal: Any) -> None:
    accepted = get_args(literal)
    if value not in accepted:
        raise ValueError(f"{key}={value!r} is not accepted; accepted: {', '.join(accepted)}")


def extract(table: torch.Tensor, t: torch.Tensor, shape: Sequence[int],
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gather ``table[t]`` for a batch of timesteps and reshape to broadcast over ``shape``."""
    out = table[t]
    if dtype is not None:
        out = out.to(dtype)
    return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))


def trajectory_steps(request: bool | Sequence[int] | None, T: int) -> list[int]:
    """The states x_s (paper index s in 0..T, descending) a sampler records: all for True."""
    if request is True:
        return list(range(T, -1, -1))
    if request is False or request is None:
        return []
    steps = sorted({int(s) for s in request}, reverse=True)
    bad = [s for s in steps if not 0 <= s <= T]
    if bad:
        raise ValueError(f"trajectory steps {bad} lie outside 0..{T}")
    return steps


def generator_device(generator: Generator) -> torch.device:
    """Where a sampler runs when no device is given: the (first) generator's device."""
    if generator is None:
        return torch.device("cpu")
    if isinstance(generator, torch.Generator):
        return generator.device
    return generator[0].device


def _checked_betas(betas: torch.Tensor, mean_type: str, var_type: str, loss_type: str, loss_norm: str
                   ) -> torch.Tensor:
    """``betas`` as float64 on the CPU, after refusing choices and schedules the math cannot use."""
    _check_choice("mean_type", mean_type, MeanType)
    _check_choice("var_type", var_type, VarType)
    _check_choice("loss_type", loss_type, LossType)
    _check_choice("loss_norm", loss_norm, LossNorm)
    betas = torch.as_tensor(betas).detach().to("cpu", torch.float64)
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a 1-D tensor with at least one entry, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas <= 1)).all()):
        bad = betas[~((betas > 0) & (betas <= 1))][0].item()
        raise ValueError(f"every beta must lie in (0, 1]; found {bad!r}")
    if bool((betas[:-1] >= 1).any()):
        raise ValueError("only the last beta may equal 1 (alphas_cumprod must stay > 0 before T)")
    if betas[-1] >= 1 and mean_type == "eps":
        raise ValueError(
            "mean_type='eps' cannot recover x0 at the last step because beta_T = 1 makes "
            "alphas_cumprod reach 0 (as in the 'jsd' schedule); use mean_type 'x0' or 'v'"
        )
    if var_type == "learned_range" and loss_type == "simple":
        raise ValueError(
            "var_type='learned_range' needs loss_type 'hybrid' or 'vlb': the simple loss "
            "gives the variance output no gradient"
        )
    if var_type != "learned_range" and loss_type == "hybrid":
        # The hybrid loss's vlb part has a stop-gradient on the mean (Nichol & Dhariwal
        # Sec. 3.1), so with a fixed variance it trains nothing: it would be the simple loss.
        raise ValueError(
            f"loss_type='hybrid' needs var_type 'learned_range', got var_type={var_type!r}: "
            "its vlb part only trains a learned variance; use loss_type 'simple' or 'vlb'"
        )
    return betas


def bound_strata_edges(num_timesteps: int, strata: int) -> torch.Tensor:
    """Block edges 0 = e_0 < e_1 < ... < e_strata = T of :meth:`GaussianDiffusion.bound_estimate`:
    block k holds code timesteps e_k .. e_{k+1} - 1. L_0 (the decoder) is a block of its own
    and the others grow geometrically, e_k ~ T^((k - 1) / (strata - 1)), each at least one
    step long and leaving one step for every later block."""
    T = num_timesteps
    if not 1 <= strata <= T:
        raise ValueError(f"strata={strata} must lie in 1..{T} (the timesteps)")
    if strata == 1:
        return torch.tensor([0, T])
    edges = [0]
    for k in range(1, strata + 1):
        geometric = round(T ** ((k - 1) / (strata - 1)))
        edges.append(min(max(edges[-1] + 1, geometric), T - (strata - k)))
    return torch.tensor(edges)


class GaussianDiffusion:
    """The DDPM forward and reverse processes for a given beta schedule.

    Args:
        betas: float tensor [T], 0 < beta <= 1 (float64 is kept; others are upcast).
        mean_type: what the network predicts: ``eps`` (Ho et al.), ``x0``, or ``v``
            (Salimans & Ho 2022, v = sqrt(abar) eps - sqrt(1 - abar) x0).
        var_type: ``fixed_small`` (beta_tilde), ``fixed_large`` (beta, with beta_tilde_1
            at the first step as in DDPM) or ``learned_range`` (Nichol & Dhariwal eq. 15;
            the network outputs twice the channels).
        loss_type: ``simple`` (Ho et al. eq. 14 on the parameterised target), ``vlb`` (the
            bound terms), ``hybrid`` (simple + hybrid_lambda * vlb with a stop-gradient on
            the mean, Nichol & Dhariwal eq. 16).
        loss_norm: ``l2`` (mean squared error) or ``l1`` for the simple loss.
        hybrid_lambda: the weight lambda of the vlb part of the hybrid loss.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        mean_type: MeanType = "eps",
        var_type: VarType = "fixed_small",
        loss_type: LossType = "simple",
        loss_norm: LossNorm = "l2",
        hybrid_lambda: float = 0.001,
    ) -> None:
        betas = _checked_betas(betas, mean_type, var_type, loss_type, loss_norm)
        self.mean_type = mean_type
        self.var_type = var_type
        self.loss_type = loss_type
        self.loss_norm = loss_norm
        self.hybrid_lambda = float(hybrid_lambda)
        self.num_timesteps = T = int(betas.shape[0])

        # --- Forward process q(x_t | x_0), Ho et al. eq. 4 ---
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # --- Posterior q(x_{t-1} | x_t, x_0), Ho et al. eqs. 6-7 ---
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta_tilde at the first step is 0; its log is clipped to beta_tilde of the second.
        first = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first.reshape(1), self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

        # fixed_large: sigma^2 = beta, except beta_tilde_1 at the first step (DDPM's choice,
        # so that the decoder is not needlessly wide).
        large = torch.cat([first.reshape(1), betas[1:]])
        self.fixed_large_variance = large
        self.fixed_large_log_variance = torch.log(large)

        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ tables
    _TABLES = (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
        "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "fixed_large_variance", "fixed_large_log_variance",
    )

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """The float64 table ``name`` on ``device``, copied there once and cached."""
        tables = self._device_tables.get(device)
        if tables is None:
            tables = {k: getattr(self, k).to(device) for k in self._TABLES}
            self._device_tables[device] = tables
        return tables[name]

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return extract(self._table(name, t.device), t, like.shape, like.dtype)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0) (Ho et al. eq. 4)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = 1.0 - self._extract("alphas_cumprod", t, x0)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x0)
        return mean, variance.expand_as(x0), log_variance.expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: Generator = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Ho et al. eq. 4)."""
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        return (self._extract("sqrt_alphas_cumprod", t, x0) * x0
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7)."""
        mean = (self._extract("posterior_mean_coef1", t, x_t) * x0
                + self._extract("posterior_mean_coef2", t, x_t) * x_t)
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ parameterisations
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        # Inverse of eq. 4: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        # Eq. 4 solved for eps: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar). Every beta is > 0,
        # so 1 - abar > 0 at every t and this is finite also where abar = 0 (the jsd schedule's
        # last step: eps = x_t), unlike the algebraically equal (x_t / sqrt(abar) - x0) /
        # sqrt(1 / abar - 1), which is inf / inf there.
        return ((x_t - self._extract("sqrt_alphas_cumprod", t, x_t) * x0)
                / self._extract("sqrt_one_minus_alphas_cumprod", t, x_t))

    def predict_v(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        # Salimans & Ho 2022: v = sqrt(abar) eps - sqrt(1 - abar) x0.
        return (self._extract("sqrt_alphas_cumprod", t, x0) * eps
                - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0)

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # x0 = sqrt(abar) x_t - sqrt(1 - abar) v (defined also where abar = 0).
        return (self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
                - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target of the simple loss for this ``mean_type``."""
        if self.mean_type == "eps":
            return noise
        if self.mean_type == "x0":
            return x0
        return self.predict_v(x0, t, noise)

    # ------------------------------------------------------------------ reverse process
    def _split_output(self, model_output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.var_type == "learned_range":
            expected = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])
            if tuple(model_output.shape) != expected:
                raise ValueError(
                    f"var_type='learned_range' needs a model output of shape {expected} "
                    f"(twice the channels), got {tuple(model_output.shape)}"
                )
            mean_out, var_out = model_output.chunk(2, dim=1)
            return mean_out, var_out
        if model_output.shape != x_t.shape:
            raise ValueError(
                f"var_type={self.var_type!r} needs a model output of the input's shape "
                f"{tuple(x_t.shape)}, got {tuple(model_output.shape)}"
            )
        return model_output, None

    def p_mean_variance(self, model: Model | None, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = True, model_output: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        """Parameters of p(x_{t-1} | x_t) in ``x_t``'s dtype.

        Returns a dict with ``mean``, ``variance``, ``log_variance`` (all shaped like x_t),
        ``pred_x0`` (clipped to [-1, 1] when ``clip_denoised``) and ``model_output`` (the
        mean part of the network output, cast to x_t's dtype). Pass ``model_output`` to
        reuse a network evaluation (then ``model`` is not called).
        """
        if model_output is None:
            model_output = model(x_t, t)
        mean_out, var_out = self._split_output(model_output.to(x_t.dtype), x_t)

        if self.var_type == "learned_range":
            # Nichol & Dhariwal eq. 15: interpolate log-variances between beta_tilde and beta.
            min_log = self._extract("posterior_log_variance_clipped", t, x_t)
            max_log = torch.log(self._extract("betas", t, x_t))
            frac = (var_out + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        elif self.var_type == "fixed_large":
            variance = self._extract("fixed_large_variance", t, x_t).expand_as(x_t)
            log_variance = self._extract("fixed_large_log_variance", t, x_t).expand_as(x_t)
        else:
            variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
            log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)

        if self.mean_type == "eps":
            pred_x0 = self.predict_x0_from_eps(x_t, t, mean_out)
        elif self.mean_type == "x0":
            pred_x0 = mean_out
        else:
            pred_x0 = self.predict_x0_from_v(x_t, t, mean_out)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        # Ho et al. eq. 11 is the posterior mean evaluated at the predicted x0.
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_x0": pred_x0, "model_output": mean_out}

    def p_sample(self, model: Model, x_t: torch.Tensor, t: torch.Tensor, generator: Generator = None,
                 clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} (Ho et al. Algorithm 2, line 4); no noise at t = 0."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
        noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    @torch.no_grad()
    def p_sample_loop(self, model: Model, shape: Sequence[int], generator: Generator = None,
                      return_trajectory: bool | Sequence[int] = False, clip_denoised: bool = True,
                      device: torch.device | str | None = None, on_step: OnStep | None = None,
                      noise: torch.Tensor | None = None) -> Any:
        """Ancestral sampling, Ho et al. Algorithm 2: x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t).

        Returns the samples [shape], or ``(samples, trajectory)`` when ``return_trajectory``
        is True (every step) or a sequence of steps: ``trajectory`` is a dict with ``steps``
        (the paper's index s of each kept state x_s, descending from T to 0) and ``x``
        [S, *shape]. ``noise`` replaces the draw of x_T; ``on_step(done, T)`` follows progress.
        """
        device = torch.device(device) if device is not None else generator_device(generator)
        T = self.num_timesteps
        record = trajectory_steps(return_trajectory, T)
        # Line 1: x_T ~ N(0, I).
        x = noise.to(device) if noise is not None else randn(shape, generator, device)
        frames = [x.clone()] if T in record else []
        for t in range(T - 1, -1, -1):
            tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
            # Lines 3-4: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with z = 0 at the last step.
            x = self.p_sample(model, x, tt, generator=generator, clip_denoised=clip_denoised)["sample"]
            if t in record:
                frames.append(x.clone())
            if on_step is not None:
                on_step(T - t, T)
        if return_trajectory is False or return_trajectory is None:
            return x
        return x, {"steps": record, "x": torch.stack(frames)}

    def sample(self, model: Model, shape: Sequence[int], generator: Generator = None,
               return_trajectory: bool | Sequence[int] = False, clip_denoised: bool = True,
               device: torch.device | str | None = None, on_step: OnStep | None = None) -> Any:
        """Ancestral sampling (Ho et al. Algorithm 2); see ``p_sample_loop``."""
        return self.p_sample_loop(model, shape, generator=generator, return_trajectory=return_trajectory,
                                  clip_denoised=clip_denoised, device=device, on_step=on_step)

    # ------------------------------------------------------------------ losses
    def _vb_terms(self, out: dict[str, torch.Tensor], x0: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor, num_levels: int | None) -> torch.Tensor:
        """Per-example bound term in nats/dim: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for
        t > 0 (code index) and the decoder -log p(x0 | x_1) at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
        log_scale = 0.5 * out["log_variance"]
        if num_levels is None:
            decoder_ll = gaussian_log_likelihood(x0, out["mean"], log_scale)
        else:
            decoder_ll = discretized_gaussian_log_likelihood(x0, out["mean"], log_scale, num_levels)
        decoder_nll = -mean_flat(decoder_ll).to(kl.dtype)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None, generator: Generator = None,
                        num_levels: int | None = None) -> dict[str, torch.Tensor]:
        """Per-example training losses, shape [B], unreduced.

        Returns ``loss`` and its parts: ``mse`` (the simple loss, present for simple and
        hybrid) and ``vb`` (T times the sampled bound term in bits/dim, an unbiased
        estimate of the bound without L_T; present for vlb and hybrid). ``t`` is drawn
        uniformly when omitted. ``num_levels`` picks the discrete decoder for the t = 0
        term (None: continuous Gaussian decoder).
        """
        B = x0.shape[0]
        if t is None:
            g = generator if isinstance(generator, torch.Generator) else None
            t = torch.randint(0, self.num_timesteps, (B,), device=x0.device, generator=g)
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise=noise)
        model_output = model(x_t, t).to(x0.dtype)
        mean_out, var_out = self._split_output(model_output, x_t)
        terms: dict[str, torch.Tensor] = {}

        if self.loss_type in ("simple", "hybrid"):
            err = mean_out - self.training_target(x0, t, noise)
            terms["mse"] = mean_flat(err.abs() if self.loss_norm == "l1" else err**2)
        if self.loss_type in ("vlb", "hybrid"):
            if self.loss_type == "hybrid":
                # Stop-gradient on the mean: the vlb part only trains the variance
                # (Nichol & Dhariwal Sec. 3.1).
                parts = [mean_out.detach()] + ([var_out] if var_out is not None else [])
                frozen = torch.cat(parts, dim=1)
            else:
                frozen = model_output
            out = self.p_mean_variance(None, x_t, t, clip_denoised=False, model_output=frozen)
            # T * L_t estimates sum_t L_t (the bound without the prior) from one draw of t.
            terms["vb"] = nats_to_bits(self._vb_terms(out, x0, x_t, t, num_levels)) * self.num_timesteps

        if self.loss_type == "simple":
            terms["loss"] = terms["mse"]
        elif self.loss_type == "vlb":
            terms["loss"] = terms["vb"]
        else:
            terms["loss"] = terms["mse"] + self.hybrid_lambda * terms["vb"]
        return terms

    # ------------------------------------------------------------------ variational bound
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) || N(0, I)) per example, in nats/dim."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean)))

    @torch.no_grad()
    def variational_bound(self, model: Model, x0: torch.Tensor, num_levels: int | None,
                          clip_denoised: bool = True, generator: Generator = None,
                          max_batch: int = 256, on_step: OnStep | None = None) -> dict[str, torch.Tensor]:
        """The full bound L = L_T + sum_{t>=1} L_{t-1} + L_0 in nats/dim, shape [B] each.

        All T terms are computed (no Monte Carlo over timesteps; each term uses one draw of
        x_t). The network is called on x_t in ``x0``'s dtype. Several timesteps share one
        network call: the batch fed to the network is about ``max_batch`` examples (a whole
        number of copies of ``x0``). The noise is drawn on the generators' device (CPU
        generators give the same bound on any device), each example's in blocks of timesteps
        (``StepNoise``, ``BOUND_NOISE_BLOCK_VALUES``). ``on_step(done, T)`` follows the
        timesteps done.
        """
        B = x0.shape[0]
        T = self.num_timesteps
        noise_device = x0.device if generator is None else generator_device(generator)
        # The network sees x_t in the dtype x0 came in (float32 for our networks); the
        # bound itself is computed in float64.
        model_dtype = x0.dtype
        x0 = x0.to(torch.float64)
        terms = torch.empty(B, T, dtype=torch.float64, device=x0.device)
        steps_per_call = max(1, max_batch // B)
        block = min(T, max(1, BOUND_NOISE_BLOCK_VALUES // max(1, x0[0].numel())))
        step_noise = StepNoise(x0.shape, generator, noise_device, torch.float64, block)
        for start in range(0, T, steps_per_call):
            ts = torch.arange(start, min(start + steps_per_call, T), device=x0.device)
            k = ts.shape[0]
            t = ts.repeat_interleave(B)
            x0_rep = x0.repeat(k, *([1] * (x0.ndim - 1)))
            noise = step_noise.take(start, start + k).reshape(k * B, *x0.shape[1:])
            x_t = self.q_sample(x0_rep, t, noise=noise.to(x0.device))
            output = model(x_t.to(model_dtype), t)
            out = self.p_mean_variance(None, x_t, t, clip_denoised=clip_denoised,
                                       model_output=output.to(torch.float64))
            vb = self._vb_terms(out, x0_rep, x_t, t, num_levels)
            terms[:, start:start + k] = vb.reshape(k, B).T
            if on_step is not None:
                on_step(start + k, T)
        prior = self.prior_kl(x0)
        decoder = terms[:, 0]
        total = prior + terms.sum(dim=1)
        return {"total": total, "prior": prior, "decoder": decoder, "terms": terms}

    @torch.no_grad()
    def bound_estimate(self, model: Model, x0: torch.Tensor, num_levels: int | None, strata: int = 8,
                       clip_denoised: bool = True, generator: Generator = None) -> dict[str, torch.Tensor]:
        """An unbiased estimate of the full bound per example, in nats/dim, from ``strata``
        timesteps per example instead of T (one network call on B * strata inputs).

        Stratified sampling: the T terms are split into ``strata`` contiguous blocks of sizes
        n_k (``bound_strata_edges``), one timestep t_k is drawn uniformly in each block, and
        n_k L_{t_k} estimates the block's sum (its expectation over t_k and x_t is exactly that
        sum), so L_T + sum_k n_k L_{t_k} is unbiased for the bound. The blocks grow
        geometrically from L_0, which is a block of its own: the terms are largest and change
        fastest at small t, so small blocks there remove most of the variance that uniform
        timestep sampling has (Nichol & Dhariwal 2021, sec. 3.3, discuss that variance). With
        ``strata = T`` every term is computed once, as in :meth:`variational_bound`.

        Returns ``total`` and ``prior`` [B] and the drawn code ``timesteps`` [B, strata]. Averaged
        over independent examples, ``total``'s standard error covers both the data and the
        timestep and noise draws.
        """
        B, T = x0.shape[0], self.num_timesteps
        edges = bound_strata_edges(T, strata).to(x0.device)
        sizes = (edges[1:] - edges[:-1]).to(torch.float64)
        draw_device = x0.device if generator is None else generator_device(generator)
        u = rand((B, strata), generator, draw_device, torch.float64).to(x0.device)
        t = edges[:-1] + (u * sizes).floor().long()                  # [B, strata], t_k in block k
        noise = randn((B, strata, *x0.shape[1:]), generator, draw_device, torch.float64).to(x0.device)
        x0_64 = x0.to(torch.float64)
        x0_rep = x0_64.repeat_interleave(strata, dim=0)              # example-major: b * strata + k
        t_flat, noise_flat = t.reshape(-1), noise.reshape(B * strata, *x0.shape[1:])
        x_t = self.q_sample(x0_rep, t_flat, noise=noise_flat)
        output = model(x_t.to(x0.dtype), t_flat)
        out = self.p_mean_variance(None, x_t, t_flat, clip_denoised=clip_denoised,
                                   model_output=output.to(torch.float64))
        terms = self._vb_terms(out, x0_rep, x_t, t_flat, num_levels).reshape(B, strata)
        prior = self.prior_kl(x0_64)
        return {"total": prior + (terms * sizes).sum(dim=1), "prior": prior, "timesteps": t}

    def bpd(self, model: Model, x0: torch.Tensor, num_levels: int = 256, clip_denoised: bool = True,
            generator: Generator = None, max_batch: int = 256, on_step: OnStep | None = None
            ) -> dict[str, torch.Tensor]:
        """The full bound in bits/dim for images on a ``num_levels`` grid scaled to [-1, 1].

        Returns float64 tensors: ``total``, ``prior`` (L_T), ``decoder`` (L_0), each [B], and
        ``terms`` [B, T] with ``terms[:, 0]`` = L_0 and ``terms[:, t]`` = L_t (code index),
        so that ``total == prior + terms.sum(1)``.
        """
        out = self.variational_bound(model, x0, num_levels, clip_denoised, generator, max_batch, on_step)
        return {k: nats_to_bits(v) for k, v in out.items()}

    def nll(self, model: Model, x0: torch.Tensor, clip_denoised: bool = False,
            generator: Generator = None, max_batch: int = 256, on_step: OnStep | None = None
            ) -> dict[str, torch.Tensor]:
        """The full bound in nats/dim for continuous data (Gaussian decoder), same keys as ``bpd``."""
        return self.variational_bound(model, x0, None, clip_denoised, generator, max_batch, on_step)

