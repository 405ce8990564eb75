"""Samples per second of every sampler at a matched budget of network evaluations (NFE), through
the code the sample stage runs (``ddpm.sampling.runner.draw_samples`` for ancestral and DDIM,
``ddpm.sampling.runner.draw_score_samples`` for pc, ode and ald).

At a budget of ``--nfe`` evaluations per sample: ancestral respaced to that many steps, DDIM with
that many steps, pc's Euler-Maruyama predictor alone over that many steps, and with a Langevin
(or annealed Langevin) corrector over half as many (one predictor and one corrector evaluation
per step); NCSN's annealed Langevin dynamics with ``--levels`` levels and budget / levels steps
each (plus the final denoising step); the probability-flow ODE is adaptive, so it runs at each
``--ode-tol`` and reports the NFE it took. The networks are the digits U-Net of params.yaml with
random weights (an eps network for the DDPM and SDE rows, the same network over NCSN's levels):
the time per evaluation depends on the architecture, not on the weights. Rows alternate in each
round; the table shows the median [min-max] over rounds of samples/s and of network evaluations
per second (samples/s x NFE per sample: where two samplers differ in it, one spends more time
beside the network).

usage: python benchmarks/samplers.py [--nfe 100] [--batch 64] [--rounds 3] [--threads 0]
                                     [--ode-tol 1e-3 1e-5] [--levels 10] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import environment, eval_network, fmt_range, load_average, machine_is_busy, median_range

from ddpm.config import Params
from ddpm.pipeline.build import TrainedModel, build_diffusion, score_model, score_sampler_settings
from ddpm.sampling.runner import draw_samples
from ddpm.sampling.score_samplers import draw_score_samples
from ddpm.score.model import ScoreModel
from ddpm.score.ncsn import score_from_ncsn, sigma_ladder

DIGITS_META = {"shape": [1, 8, 8], "kind": "image", "num_levels": 17}
CPU = torch.device("cpu")


def _params(**overrides: Any) -> Params:
    return Params.from_dict({"dataset": "digits", **overrides})


def samplers(nfe: int, ode_tols: list[float], levels: int) -> dict[str, Callable[[int], tuple[torch.Tensor, float]]]:
    """name -> draw(batch) returning (samples, NFE per sample)."""
    ddpm_params = _params()
    diffusion, network = build_diffusion(ddpm_params), eval_network(ddpm_params, DIGITS_META, CPU)
    trained = TrainedModel(ddpm_params, DIGITS_META, diffusion, network, None, CPU)
    ddpm_score = score_model(trained)
    shape = lambda n: (n, *DIGITS_META["shape"])

    def ddpm_sampler(sampler: str) -> Callable[[int], tuple[torch.Tensor, float]]:
        def draw(n: int) -> tuple[torch.Tensor, float]:
            x, _ = draw_samples(diffusion, network, shape(n), seed=0, batch_size=n, sampler=sampler, steps=nfe,
                                trajectory_frames=2)
            return x, float(nfe)
        return draw

    def score_sampler(model: ScoreModel, p: Params) -> Callable[[int], tuple[torch.Tensor, float]]:
        sampler = p.sample.sampler
        settings = score_sampler_settings(p, p.diffusion.timesteps)

        def draw(n: int) -> tuple[torch.Tensor, float]:
            x, info = draw_score_samples(model, sampler, settings, shape(n), seed=0, batch_size=n,
                                         trajectory_frames=2)
            return x, float(info["nfe"].mean())
        return draw

    def pc(predictor: str, corrector: str, steps: int) -> Params:
        return _params(sample={"sampler": "pc", "predictor": predictor, "corrector": corrector, "steps": steps})

    rows: dict[str, Callable[[int], tuple[torch.Tensor, float]]] = {
        "ancestral (respaced)": ddpm_sampler("ancestral"),
        "ddim (eta 0)": ddpm_sampler("ddim"),
        "pc: euler_maruyama": score_sampler(ddpm_score, pc("euler_maruyama", "none", nfe).resolved()),
        "pc: euler_maruyama + langevin": score_sampler(ddpm_score, pc("euler_maruyama", "langevin",
                                                                     nfe // 2).resolved()),
        "pc: euler_maruyama + annealed_langevin": score_sampler(
            ddpm_score, pc("euler_maruyama", "annealed_langevin", nfe // 2).resolved()),
    }
    for tol in ode_tols:
        p = _params(sample={"sampler": "ode"}, ode={"rtol": tol, "atol": tol}).resolved()
        rows[f"ode (rtol = atol = {tol:g})"] = score_sampler(ddpm_score, p)
    # NCSN: its own network over `levels` noise levels; ladder from sigma 10 to 0.01.
    ncsn = _params(family="ncsn", sample={"sampler": "ald"},
                   ncsn={"sigma_max": 10.0, "num_levels": levels, "steps_per_level": max(1, nfe // levels)}).resolved()
    sigmas = sigma_ladder(10.0, 0.01, levels)
    level_score = score_from_ncsn(sigmas, eval_network(ncsn, DIGITS_META, CPU))
    rows["ald (NCSN)"] = score_sampler(ScoreModel("ncsn", sigmas=sigmas, level_score=level_score), ncsn)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe", type=int, default=100, help="network evaluations per sample")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--ode-tol", type=float, nargs="+", default=[1e-3, 1e-5])
    parser.add_argument("--levels", type=int, default=10, help="NCSN's noise levels")
    parser.add_argument("--quick", action="store_true", help="smoke run: NFE 10, batch 8, one round")
    args = parser.parse_args()
    if args.quick:
        args.nfe, args.batch, args.rounds, args.ode_tol = 10, 8, 1, [1e-2]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = environment(CPU, args.quick)
    print(env)
    if machine_is_busy(CPU, env["load_avg_start"]):
        print(f"warning: load average {env['load_avg_start']:.1f}: absolute figures are slow and noisy; "
              "compare the rows (timed alternately in each round)")
    rows = samplers(args.nfe, args.ode_tol, args.levels)
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    nfes: dict[str, float] = {}
    with torch.inference_mode():
        for draw in rows.values():  # warm-up: the first call of each allocates and builds
            draw(min(args.batch, 4))
        for _ in range(args.rounds):
            for name, draw in rows.items():
                start = time.perf_counter()
                x, nfes[name] = draw(args.batch)
                seconds[name].append(time.perf_counter() - start)
                assert torch.isfinite(x).all(), name
    print(f"\n{args.batch} digits samples per draw, NFE budget {args.nfe}, {args.rounds} rounds, "
          f"load average at the end {load_average()}")
    print(f"{'sampler':42s} {'NFE/sample':>10s}  {'samples/s':>24s}  {'network evaluations/s':>24s}")
    for name in rows:
        rate = median_range([args.batch / s for s in seconds[name]])
        evaluations = median_range([args.batch * nfes[name] / s for s in seconds[name]])
        print(f"{name:42s} {nfes[name]:10.1f}  {fmt_range(rate, 1):>24s}  {fmt_range(evaluations, 0):>24s}")


if __name__ == "__main__":
    main()
