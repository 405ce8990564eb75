"""The evaluate stage's computation: the full variational bound over a test split,
averaged with its standard error, in bits/dim for images and nats/dim for vectors.

``bound_per_example`` works on any subset of example indices (a torchrun rank's share);
each example's noise comes from its own generator, item ``index`` of the run's "bound"
stream (``ddpm.seeding``), so the per-example values do not depend on the batch size or on
how the examples are split over ranks.
``summarize_bound`` turns the gathered values into the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ddpm.batches import seeded_batches
from ddpm.data import to_model_space
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.errors import EvaluationError
from ddpm.likelihood import nats_to_bits
from ddpm.progress import OnStep

PARTS = ("total", "prior", "decoder", "terms")


def evaluation_inputs(test: np.ndarray, meta: dict[str, Any], num_images: int = 0) -> torch.Tensor:
    """The first ``num_images`` test examples (0 = all) in model space, float32."""
    n = len(test) if num_images == 0 else min(num_images, len(test))
    if meta["kind"] == "image":
        return torch.as_tensor(to_model_space(test[:n], meta["num_levels"]))
    return torch.as_tensor(np.asarray(test[:n], dtype=np.float32))


@torch.no_grad()
def bound_per_example(diffusion: GaussianDiffusion, model: Model, x_all: torch.Tensor, meta: dict[str, Any],
                      indices: Sequence[int] | None = None, batch_size: int = 512, clip_denoised: bool = True,
                      seed: int = 0, device: torch.device | str = "cpu", on_step: OnStep | None = None
                      ) -> dict[str, torch.Tensor]:
    """All T bound terms for the examples ``indices`` of ``x_all`` (default: all), on the CPU.

    Returns ``index`` [n] and the parts of ``GaussianDiffusion.bpd`` (images, bits/dim) or
    ``nll`` (vectors, nats/dim): ``total``, ``prior``, ``decoder`` [n], ``terms`` [n, T].
    ``on_step(done, total)`` counts the timesteps done over all batches.
    """
    indices = list(range(len(x_all))) if indices is None else list(indices)
    T = diffusion.num_timesteps
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in PARTS}
    for chunk, gens, batch_step in seeded_batches(indices, batch_size, seed, "bound", device, on_step):
        x0 = x_all[chunk].to(device)
        if meta["kind"] == "image":
            out = diffusion.bpd(model, x0, num_levels=meta["num_levels"], clip_denoised=clip_denoised,
                                generator=gens, max_batch=batch_size, on_step=batch_step)
        else:
            out = diffusion.nll(model, x0, clip_denoised=False, generator=gens, max_batch=batch_size,
                                on_step=batch_step)
        for key in PARTS:
            parts[key].append(out[key].cpu())
    result = {k: torch.cat(v) if v else torch.empty((0, T) if k == "terms" else (0,), dtype=torch.float64)
              for k, v in parts.items()}
    result["index"] = torch.as_tensor(indices, dtype=torch.long)
    return result


@torch.no_grad()
def bound_curve_point(diffusion: GaussianDiffusion, model: Model, x: torch.Tensor, meta: dict[str, Any],
                      strata: int, seed: int = 0, clip_denoised: bool = True, max_batch: int = 512,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """One point of the bound's learning curve: an unbiased estimate of the bound of the examples
    ``x`` (bits/dim for images, nats/dim for vectors) from ``strata`` timesteps each
    (``GaussianDiffusion.bound_estimate``), and its standard error over the examples.

    Example i always draws from item i of the "bound_curve" stream, so successive points of a
    run use the same timesteps and noise, and their differences show the model, not the draws.
    Keys: ``bpd_estimate`` and ``bpd_estimate_stderr`` (``nll_...`` for vectors).
    """
    images = meta["kind"] == "image"
    per_call = max(1, max_batch // strata)
    totals = []
    for chunk, gens, _ in seeded_batches(range(len(x)), per_call, seed, "bound_curve", device):
        x0 = x[chunk].to(device)
        out = diffusion.bound_estimate(model, x0, meta["num_levels"] if images else None, strata,
                                       clip_denoised=clip_denoised and images, generator=gens)
        totals.append(out["total"].cpu())
    total = torch.cat(totals)
    total = nats_to_bits(total) if images else total
    metric = "bpd" if images else "nll"
    if len(total) < 2 or not bool(torch.isfinite(total).all()):
        raise EvaluationError(f"the bound estimate needs at least 2 finite examples; got {total.tolist()[:4]}...")
    return {f"{metric}_estimate": total.mean().item(),
            f"{metric}_estimate_stderr": total.std().item() / math.sqrt(len(total))}


def merge_parts(shares: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate ranks' ``bound_per_example`` results in example order."""
    index = torch.cat([s["index"] for s in shares])
    order = torch.argsort(index)
    return {k: torch.cat([s[k] for s in shares])[order] for k in (*PARTS, "index")}


def summarize_bound(parts: dict[str, torch.Tensor], meta: dict[str, Any], clip_denoised: bool) -> dict[str, Any]:
    """The metrics.json report (means, standard error, n) and ``terms_rows`` for the CSV
    ([t, mean term, stderr] for the paper's t = 1..T; t = 1 is the decoder L_0).
    Refuses (``EvaluationError``) to report a bound with NaN or infinite values, or none."""
    bad = sorted(k for k in PARTS if not torch.isfinite(parts[k]).all())
    if bad:
        raise EvaluationError(f"the bound has NaN or infinite values in {bad}; refusing to report it "
                              "(the model's outputs or variances are not finite)")
    images = meta["kind"] == "image"
    metric, unit = ("bpd", "bits/dim") if images else ("nll", "nats/dim")
    n, T = parts["terms"].shape
    if n == 0:
        raise EvaluationError("no test examples to evaluate (the test split or the number of images asked for is 0)")
    scale = 1.0 / math.sqrt(n)
    total = parts["total"]
    term_mean = parts["terms"].mean(0)
    term_se = parts["terms"].std(0) * scale if n > 1 else torch.full_like(term_mean, float("nan"))
    return {
        "metric": metric,
        "unit": unit,
        metric: {"total": total.mean().item(),
                 "stderr": total.std().item() * scale if n > 1 else float("nan"),
                 "prior": parts["prior"].mean().item(), "decoder": parts["decoder"].mean().item(),
                 "kl_terms": parts["terms"][:, 1:].sum(1).mean().item()},
        "num_images": n,
        "timesteps": T,
        "clip_denoised": bool(clip_denoised) if images else False,
        "terms_rows": [[t + 1, term_mean[t].item(), term_se[t].item()] for t in range(T)],
    }
