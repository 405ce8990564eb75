"""The standard error of the bound's learning-curve estimate (`GaussianDiffusion.bound_estimate`)
with its strata (L_0 alone, then blocks growing geometrically in t: `bound_strata_edges`)
against equal-size blocks, on the trained model of `dvc repro` and the test images the train
stage's curve uses. Both estimators are unbiased for the full bound; the figure is how far one
estimate moves, per seed.

usage: python benchmarks/bound_curve_strata.py [--images 100] [--strata 10] [--seeds 3]
(needs models/model.pt and data/prepared from `dvc repro`)
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import environment

from ddpm.config import load_params
from ddpm.data import load_prepared, to_model_space
from ddpm.diffusion import GaussianDiffusion, bound_strata_edges
from ddpm.pipeline.build import load_for_inference


def estimate(diffusion: GaussianDiffusion, model, x0: torch.Tensor, edges: torch.Tensor, num_levels: int,
             seed: int) -> tuple[float, float]:
    """The stratified estimate of the bound per image for the given block edges, in bits/dim:
    its mean over the images and the standard error of that mean."""
    g = torch.Generator().manual_seed(seed)
    B, S = len(x0), len(edges) - 1
    sizes = (edges[1:] - edges[:-1]).to(torch.float64)
    t = edges[:-1] + (torch.rand((B, S), generator=g, dtype=torch.float64) * sizes).floor().long()
    noise = torch.randn((B, S, *x0.shape[1:]), generator=g, dtype=torch.float64)
    x0_rep = x0.to(torch.float64).repeat_interleave(S, dim=0)
    t_flat = t.reshape(-1)
    x_t = diffusion.q_sample(x0_rep, t_flat, noise=noise.reshape(B * S, *x0.shape[1:]))
    with torch.no_grad():
        output = model(x_t.to(torch.float32), t_flat).to(torch.float64)
    out = diffusion.p_mean_variance(None, x_t, t_flat, clip_denoised=True, model_output=output)
    terms = diffusion._vb_terms(out, x0_rep, x_t, t_flat, num_levels).reshape(B, S)
    total = (diffusion.prior_kl(x0.to(torch.float64)) + (terms * sizes).sum(dim=1)) / math.log(2)
    return total.mean().item(), total.std().item() / math.sqrt(B)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--strata", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    params = load_params("params.yaml")
    _, trained = load_for_inference("models/model.pt", params, use_ema=True)
    print(environment(trained.device, quick=False))
    prepared = load_prepared("data/prepared")
    levels = prepared.meta["num_levels"]
    x0 = torch.as_tensor(to_model_space(prepared.test[:args.images], levels)).to(torch.float32)
    T = trained.diffusion.num_timesteps
    ways = {
        "equal blocks": torch.div(torch.arange(args.strata + 1) * T, args.strata, rounding_mode="floor"),
        "L_0 alone, then geometric (bound_strata_edges)": bound_strata_edges(T, args.strata),
    }
    for name, edges in ways.items():
        runs = [estimate(trained.diffusion, trained.network, x0, edges, levels, seed) for seed in range(args.seeds)]
        shown = ", ".join(f"{mean:.3f} +- {se:.3f}" for mean, se in runs)
        print(f"{name:<48} bits/dim per seed: {shown}")


if __name__ == "__main__":
    main()
