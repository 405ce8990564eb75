"""Time and NFE per image of the probability-flow ODE likelihood (ddpm.score.ode.ode_bpd, exact
divergence and Hutchinson) against the full variational bound (GaussianDiffusion.bpd, T network
calls per image) on the same test images of the trained model of `dvc repro`.

The ODE runs on the model's own SDE (`sde_from_diffusion`, whose beta(t) is piecewise constant
between the diffusion's knots); for a `linear` schedule with T = 1000 it also runs on the
continuous VPSDE(0.1, 20), the same process with a smooth drift, to show what the knots cost in
NFE. Last, for one dequantized image and a fixed Hutchinson probe: its log-density alone and
inside the batch at the given tolerance against a reference solve at a tight tolerance, i.e. the
solver's real error next to the batch dependence left by the float32 network's rounding (which
moves the adaptive steps).

usage: python benchmarks/ode_likelihood.py [--images 8] [--threads 1] [--rtol 1e-5] [--atol 1e-5]
                                           [--skip-exact] [--reference-tol 1e-7] [--skip-accuracy]
(needs models/model.pt and data/prepared from `dvc repro`; on 2 shared cores the exact
divergence takes about a minute per 8x8 image)
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import environment, load_average, machine_is_busy

from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.evaluation.bound import evaluation_inputs
from ddpm.pipeline.build import load_trained
from ddpm.score.ode import log_likelihood, ode_bpd
from ddpm.score.sde import VPSDE, score_from_diffusion
from ddpm.seeding import generators


def mean_se(values: torch.Tensor) -> str:
    v = values.to(torch.float64)
    se = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean().item():.3f} +- {se:.3f}"


def row(name: str, run: Callable[[], dict[str, Any]], n: int) -> dict[str, Any]:
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    nfe = out.get("nfe")
    nfe_text = "-" if nfe is None else f"{nfe.double().mean().item():.0f} [{int(nfe.min())}-{int(nfe.max())}]"
    print(f"{name:<44} {nfe_text:>16} {out.get('calls', '-'):>8} {seconds / n:>10.2f} {mean_se(out['bpd']):>16}",
          flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a shared CPU a second OpenMP thread mostly waits for the first")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--skip-exact", action="store_true", help="leave out the exact divergence (the slow row)")
    parser.add_argument("--reference-tol", type=float, default=1e-7)
    parser.add_argument("--skip-accuracy", action="store_true", help="leave out the accuracy lines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    trained = load_trained("models/model.pt", load_params(), device)
    print(environment(device, quick=False))
    if machine_is_busy(device, load_average()):
        print("note: the machine is busy; absolute timings are slow and noisy")
    meta, diffusion, network = trained.meta, trained.diffusion, trained.network
    K = meta["num_levels"]
    x = evaluation_inputs(load_prepared("data/prepared").test, meta, args.images)
    n = len(x)
    score = score_from_diffusion(diffusion, network)
    solver = {"rtol": args.rtol, "atol": args.atol}
    gens = lambda: generators(0, "bound", range(n))  # fresh streams for each row
    print(f"{n} test images {tuple(x.shape[1:])}, K = {K}, T = {diffusion.num_timesteps}, rtol = {args.rtol:g}, "
          f"atol = {args.atol:g}, one dequantization each; seconds are wall time per image, batch = all images")
    print(f"{'method':<44} {'NFE/image':>16} {'calls':>8} {'s/image':>10} {'bits/dim':>16}")
    sdes = {"model's SDE": score.sde}
    if diffusion.num_timesteps == 1000 and torch.allclose(diffusion.betas, VPSDE().discrete_betas):
        sdes["VPSDE(0.1, 20)"] = VPSDE()
    for label, sde in sdes.items():
        if not args.skip_exact and label == "model's SDE":
            row(f"ODE, exact divergence, {label}", lambda sde=sde: relabel(
                ode_bpd(sde, score, x, K, generator=gens(), exact_divergence=True, **solver)), n)
        row(f"ODE, Hutchinson, {label}", lambda sde=sde: relabel(
            ode_bpd(sde, score, x, K, generator=gens(), exact_divergence=False, **solver)), n)
    with torch.no_grad():
        row(f"variational bound (T = {diffusion.num_timesteps}, clip_denoised)", lambda: {
            "bpd": diffusion.bpd(network, x, num_levels=K, generator=gens(), max_batch=n)["total"],
            "calls": diffusion.num_timesteps}, n)
    if not args.skip_accuracy:
        accuracy(sdes, score, x, K, args)
    print(f"load average at the end: {load_average()}")


def accuracy(sdes: dict[str, Any], score: Any, x: torch.Tensor, K: int, args: argparse.Namespace) -> None:
    """log p of image 0 (dequantized once, Hutchinson with a fixed probe): alone and in the
    batch at the run's tolerance, and alone at ``--reference-tol``."""
    delta = 2 / (K - 1)
    y = x + delta * (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 0.5)
    print(f"image 0, log p in nats (Hutchinson, one probe); reference rtol = atol = {args.reference_tol:g}")
    for label, sde in sdes.items():
        runs = {"alone": (y[:1], args.rtol, args.atol), f"in the batch of {len(y)}": (y, args.rtol, args.atol),
                "reference, alone": (y[:1], args.reference_tol, args.reference_tol)}
        shown = []
        for name, (inputs, rtol, atol) in runs.items():
            out = log_likelihood(sde, score, inputs, rtol=rtol, atol=atol, exact_divergence=False,
                                 generator=generators(0, "bound", range(len(inputs))))
            shown.append(f"{name} {out['logp'][0].item():.4f} (NFE {int(out['nfe'][0])})")
        print(f"  {label:<16} " + ", ".join(shown), flush=True)


def relabel(out: dict[str, Any]) -> dict[str, Any]:
    """ode_bpd's result with its batched evaluations under the table's ``calls``."""
    return {**out, "calls": out["nfe_total"]}


if __name__ == "__main__":
    main()
