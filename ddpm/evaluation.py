"""The evaluate stage's computation: the full variational bound over a test split,
averaged with its standard error, in bits/dim for images and nats/dim for vectors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ddpm.data import to_model_space
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.samplers import sample_generators

# Offset that keeps the bound's noise streams apart from the sampler's (same seed).
_BOUND_SEED_OFFSET = 1_000_000_007


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    n = x.shape[0]
    se = x.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return x.mean().item(), se


@torch.no_grad()
def evaluate_bound(diffusion: GaussianDiffusion, model: Model, test: np.ndarray, meta: dict[str, Any],
                   num_images: int = 0, batch_size: int = 512, clip_denoised: bool = True, seed: int = 0,
                   device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """All T terms of the bound for the first ``num_images`` test examples (0 = all).

    Each example's noise comes from its own generator, so the result does not depend on
    ``batch_size``. Returns the report written to metrics.json plus ``terms_rows``
    ([t, mean term, stderr] for the paper's t = 1..T; t = 1 is the decoder L_0).
    Refuses (ValueError) to report a bound with NaN or infinite values.
    """
    images = meta["kind"] == "image"
    n = len(test) if num_images == 0 else min(num_images, len(test))
    if images:
        x_all = torch.as_tensor(to_model_space(test[:n], meta["num_levels"]))
    else:
        x_all = torch.as_tensor(np.asarray(test[:n], dtype=np.float32))
    parts: dict[str, list[torch.Tensor]] = {"total": [], "prior": [], "decoder": [], "terms": []}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x0 = x_all[start:stop].to(device)
        gens = sample_generators(seed + _BOUND_SEED_OFFSET, range(start, stop), device)
        if images:
            out = diffusion.bpd(model, x0, num_levels=meta["num_levels"], clip_denoised=clip_denoised,
                                generator=gens, max_batch=batch_size, progress=progress)
        else:
            out = diffusion.nll(model, x0, clip_denoised=False, generator=gens, max_batch=batch_size,
                                progress=progress)
        for key in parts:
            parts[key].append(out[key].cpu())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    bad = {k for k, v in cat.items() if not torch.isfinite(v).all()}
    if bad:
        raise ValueError(f"the bound has NaN or infinite values in {sorted(bad)}; refusing to report it "
                         "(the model's outputs or variances are not finite)")
    metric, unit = ("bpd", "bits/dim") if images else ("nll", "nats/dim")
    total, se = _mean_se(cat["total"])
    kl_terms = cat["terms"][:, 1:].sum(1)
    term_means = cat["terms"].mean(0)
    term_se = cat["terms"].std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(term_means, float("nan"))
    return {
        "metric": metric,
        "unit": unit,
        metric: {"total": total, "stderr": se, "prior": cat["prior"].mean().item(),
                 "decoder": cat["decoder"].mean().item(), "kl_terms": kl_terms.mean().item()},
        "num_images": n,
        "timesteps": diffusion.num_timesteps,
        "clip_denoised": bool(clip_denoised) if images else False,
        "terms_rows": [[t + 1, term_means[t].item(), term_se[t].item()] for t in range(diffusion.num_timesteps)],
    }
