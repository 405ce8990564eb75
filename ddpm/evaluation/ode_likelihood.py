"""The evaluate stage's probability-flow ODE likelihood of test examples (``ddpm.score.ode``), averaged
with its standard error: bits/dim of dequantized images (``ode_bpd``), nats/dim of vectors
(``ode_nll``), with the NFE and the solver settings behind the number.

Example i draws its dequantization noise and Hutchinson probe from item i of the run's
"ode_likelihood" stream (``ddpm.seeding``), and the solver controls each example's steps on its
own (``ddpm.score.ode``), so an example's value does not depend on its batch or on the torchrun split
beyond the solver's tolerance. Every key of the report holds ``ode`` in its name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpm.batches import seeded_batches
from ddpm.errors import EvaluationError
from ddpm.score.ode import ode_bpd, ode_nll
from ddpm.score.sde import SDE, Score


@dataclass(frozen=True)
class OdeSettings:
    """What an ODE likelihood is computed with (the params' ``ode`` section, resolved)."""

    rtol: float
    atol: float
    eps: float
    exact_divergence: bool
    repeats: int = 1


def ode_likelihood_per_example(sde: SDE, score: Score, x_all: torch.Tensor, meta: dict[str, Any],
                               settings: OdeSettings, indices: Sequence[int] | None = None, batch_size: int = 512,
                               seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``value`` [n] (bits/dim for images, nats/dim for vectors, float64), ``nfe`` [n] (right-hand
    side evaluations, summed over repeats) and ``index`` [n] of the examples ``indices`` of ``x_all``."""
    indices = list(range(len(x_all))) if indices is None else list(indices)
    s = settings
    values, nfes = [], []
    for chunk, gens, _ in seeded_batches(indices, batch_size, seed, "ode_likelihood", device):
        x = x_all[chunk].to(device)
        common = {"generator": gens, "eps": s.eps, "rtol": s.rtol, "atol": s.atol,
                  "exact_divergence": s.exact_divergence, "max_batch": batch_size}
        if meta["kind"] == "image":
            out = ode_bpd(sde, score, x, meta["num_levels"], repeats=s.repeats, **common)
            values.append(out["bpd"].cpu())
        else:
            out = ode_nll(sde, score, x, **common)
            values.append(out["nll"].cpu())
        nfes.append(out["nfe"].cpu())
    empty = torch.empty(0, dtype=torch.float64)
    return {"value": torch.cat(values) if values else empty,
            "nfe": torch.cat(nfes).to(torch.float64) if nfes else empty,
            "index": torch.as_tensor(indices, dtype=torch.long)}


def merge_ode_parts(shares: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate ranks' ``ode_likelihood_per_example`` results in example order."""
    index = torch.cat([s["index"] for s in shares])
    order = torch.argsort(index)
    return {k: torch.cat([s[k] for s in shares])[order] for k in ("value", "nfe", "index")}


def summarize_ode(parts: dict[str, torch.Tensor], meta: dict[str, Any], settings: OdeSettings) -> dict[str, Any]:
    """The report ``{"ode_bpd" | "ode_nll": {total, stderr, nfe, num_images, rtol, atol, eps,
    repeats, divergence}, "ode_unit": ...}``; ``EvaluationError`` for none or non-finite values."""
    value, n = parts["value"], len(parts["value"])
    if n == 0:
        raise EvaluationError("no test examples for the ODE likelihood (ode.num_images or the test split is 0)")
    if not bool(torch.isfinite(value).all()):
        raise EvaluationError("the ODE likelihood has NaN or infinite values; refusing to report it "
                              "(the model's scores are not finite)")
    images = meta["kind"] == "image"
    name, unit = ("ode_bpd", "bits/dim") if images else ("ode_nll", "nats/dim")
    return {
        name: {"total": value.mean().item(),
               "stderr": value.std().item() / math.sqrt(n) if n > 1 else float("nan"),
               "nfe": parts["nfe"].mean().item(), "num_images": n, "rtol": settings.rtol, "atol": settings.atol,
               "eps": settings.eps, "repeats": settings.repeats if images else 1,
               "divergence": "exact" if settings.exact_divergence else "hutchinson"},
        "ode_unit": unit,
    }
