"""This project's U-Net against diffusers' ``UNet2DModel`` and lucidrains'
denoising-diffusion-pytorch at matched parameter counts (issue 12), in one process.

The configurations (issue 12's table):

| case | ours (``ddpm.nn.unet`` via ``Params``) | diffusers ``UNet2DModel`` | train batch |
| --- | --- | --- | --- |
| 1x28x28, ~2.6M params | base 40, mult (1,2,2), 2 res blocks, attention at 7 | block_out (32,64,96) | 64 |
| 3x32x32, ~7.9M params | base 60, mult (1,2,2,2), 2 res blocks, attention at 4 | block_out (64,112,112,128) | 32 |

diffusers: layers_per_block 2, attention in the lowest block, norm_num_groups 8,
attention_head_dim 32. lucidrains: its ``Unet`` with our ``channel_mult`` as ``dim_mults`` and
the ``dim`` whose parameter count is nearest ours. Dropout is the same on every side
(``--dropout``, default 0.1: DDPM's and this project's default). Sampling batch 16.

For fp32 and for bf16 autocast (the network under ``torch.autocast``; each library's own
loss and sampler math as it runs them):

1. **Training, images/s**: one optimizer step per call. Ours is ``ddpm.training.loop.train_step``
   set up by ``setup_training`` (the train stage's own path: its objective, Adam, gradient
   clipping, lr schedule and EMA update), with t and noise drawn per step by
   ``batch_draws`` and dropout seeded per step as ``train`` does, under ``flush_denormals``.
   diffusers: ``DDPMScheduler.add_noise``, forward, MSE, backward, ``Adam``. lucidrains: its
   ``GaussianDiffusion`` forward (draws t and noise, returns the MSE), backward, ``Adam``.
   Ours does more per step (clipping, EMA), not less.
2. **Sampling, ms per ancestral step** on a batch of 16: ours ``GaussianDiffusion.p_sample``
   with one generator per image (as ``ddpm.sampling.runner.draw_samples``), diffusers
   ``model(x, t).sample`` + ``DDPMScheduler.step``, lucidrains ``p_sample``.

Every side is built once; then rounds alternate (ours, diffusers, lucidrains, ours, ...),
each side's round being ``--steps`` timed calls after one untimed call. The ratio
ours/diffusers (speed: >= 1 means ours is faster) is taken per round, pairing the
neighbouring rounds, and printed as the median [min-max] over rounds: on a shared machine the
absolute figures drift, the paired ratios much less. FLOPs per image come from
``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention; forward and
backward for training), and the fraction of peak divides the achieved FLOP/s by the best of a
few large matmuls in the same precision measured at the start.

Run from the repository root::

    python benchmarks/bench_peers.py                        # all 8 cells, ~10-20 min on 2 cores
    python benchmarks/bench_peers.py --quick                # smoke run: 1 round, 1 step, tiny batches
    python benchmarks/bench_peers.py --cases mnist --precisions fp32 --rounds 7
    python benchmarks/bench_peers.py --profile --rounds 1   # + where ours spends its time
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import batches, cpu_name, eval_network, load_average, machine_is_busy, median_range, random_levels, sync
from _diffusers_peer import (
    build_unet2d,
    diffusers_available,
    diffusers_sample_step,
    diffusers_train_step,
)
from _peer import build_peer, count_flops, match_peer_dim, peer_available, peer_sample_step, peer_train_step

from ddpm import seeding
from ddpm.config import Params
from ddpm.data import to_model_space
from ddpm.io import atomic_write_json
from ddpm.nn import count_parameters
from ddpm.pipeline.build import build_diffusion
from ddpm.pipeline.runtime import autocast, flush_denormals, resolve_device
from ddpm.training.loop import batch_draws, seed_dropout, setup_training, train_step


@dataclasses.dataclass(frozen=True)
class Case:
    name: str                 # the case's name (--cases)
    dataset: str              # the dataset whose defaults the rest of our params take
    shape: tuple[int, int, int]
    model: dict[str, Any]     # our params' model section
    train_batch: int


CASES = {
    "mnist": Case("mnist", "mnist", (1, 28, 28), {"base_channels": 40, "channel_mult": [1, 2, 2], "num_res_blocks": 2,
                                         "attn_resolutions": [7]}, 64),
    # Diffusers' own widths (32, 64, 96) in our U-Net: the same parameter count to the unit
    # (2,606,209) and the same FLOPs, so the ratio compares implementations, not architectures.
    "mnist-widths": Case("mnist-widths", "mnist", (1, 28, 28), {"base_channels": 32, "channel_mult": [1, 2, 3],
                                                "num_res_blocks": 2, "attn_resolutions": [7]}, 64),
    "cifar10": Case("cifar10", "cifar10", (3, 32, 32), {"base_channels": 60, "channel_mult": [1, 2, 2, 2],
                                             "num_res_blocks": 2, "attn_resolutions": [4]}, 32),
}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
SAMPLE_BATCH = 16
LEVELS = 256


@dataclasses.dataclass
class Side:
    """One library in one cell: its step closures and what they compute."""

    name: str
    parameters: int
    train: Callable[[], None]
    sample: Callable[[], None]
    train_flops: int = 0       # per image, forward + backward
    sample_flops: int = 0      # per image, one forward


# ---------------------------------------------------------------------- the sides
def our_params(case: Case, precision: str, dropout: float) -> Params:
    return Params.from_dict({"dataset": case.dataset, "model": {**case.model, "dropout": dropout},
                             "train": {"precision": precision, "batch_size": case.train_batch}})


def ours(case: Case, precision: str, dropout: float, sample_batch: int, device: torch.device, seed: int) -> Side:
    params = our_params(case, precision, dropout)
    meta = {"kind": "image", "shape": list(case.shape), "num_levels": LEVELS}
    trainer = setup_training(params, meta, device)
    T = params.diffusion.timesteps
    levels = random_levels(4 * case.train_batch, case.shape, LEVELS, seed, dtype=np.uint8)
    data = torch.as_tensor(to_model_space(levels, LEVELS)).to(device)
    trainer.state.model.train()
    data_batches = batches(data, case.train_batch)

    def train() -> None:
        s = trainer.state.step
        t, noise, _ = batch_draws(params, s, case.shape, device, trainer.objective)
        seed_dropout(params.seed, s, 0, device)
        with flush_denormals(device):
            train_step(trainer, next(data_batches), t, noise)

    net = eval_network(params, meta, device)
    diffusion = build_diffusion(params)
    amp = PRECISIONS[precision]
    gens = seeding.generators(seed, "sample", range(sample_batch), device)
    x = seeding.randn((sample_batch, *case.shape), gens, device)
    t_now = T - 1

    @torch.no_grad()
    def sample() -> None:
        nonlocal x, t_now
        tt = torch.full((sample_batch,), t_now, device=device, dtype=torch.long)
        with autocast(device, amp):
            x = diffusion.p_sample(net, x, tt, generator=gens, clip_denoised=True)["sample"]
        t_now = t_now - 1 if t_now > 0 else T - 1

    return Side("ours", count_parameters(trainer.state.model), train, sample)


def diffusers_side(case: Case, precision: str, dropout: float, sample_batch: int, device: torch.device,
                   seed: int) -> Side:
    torch.manual_seed(seed)
    model = build_unet2d(case.shape, dropout).to(device)
    sampler_model = build_unet2d(case.shape, dropout).to(device).requires_grad_(False)
    data = (torch.rand(4 * case.train_batch, *case.shape, device=device) * 2 - 1)
    amp = PRECISIONS[precision]
    return Side("diffusers", count_parameters(model), diffusers_train_step(model, data, case.train_batch, amp, seed),
                diffusers_sample_step(sampler_model, case.shape, sample_batch, amp, device, seed))


def lucidrains_side(case: Case, precision: str, dropout: float, sample_batch: int, device: torch.device,
                    seed: int, target: int) -> Side:
    mults = tuple(case.model["channel_mult"])
    dim, _ = match_peer_dim(case.shape, mults, target)
    torch.manual_seed(seed)
    model = build_peer(case.shape, dim, mults, dropout, 1000).to(device)
    sampler_model = build_peer(case.shape, dim, mults, dropout, 1000).to(device).requires_grad_(False)
    data = torch.rand(4 * case.train_batch, *case.shape, device=device)
    amp = PRECISIONS[precision]
    return Side("lucidrains", count_parameters(model.model), peer_train_step(model, data, case.train_batch, amp),
                peer_sample_step(sampler_model, case.shape, sample_batch, amp, device))


def flops_per_image(side: Side, train_batch: int, sample_batch: int) -> tuple[int, int]:
    """FLOPs per image of one training step and one sampling step of an fp32 side (the counts do
    not depend on the precision, and FlopCounterMode's decompositions drop autocast)."""
    return count_flops(side.train) // train_batch, count_flops(side.sample) // sample_batch


# ---------------------------------------------------------------------- timing
def peak_flops(dtype: torch.dtype, device: torch.device, n: int, reps: int) -> float:
    """The best FLOP/s of ``reps`` n x n matmuls in ``dtype``: the machine's measured peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def timed_round(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call over ``steps`` calls, after one untimed call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def build_sides(case: Case, precision: str, args: argparse.Namespace, device: torch.device, peers: list[str],
                sample_batch: int, seed: int = 0) -> list[Side]:
    sides = [ours(case, precision, args.dropout, sample_batch, device, seed)]
    if "diffusers" in peers:
        sides.append(diffusers_side(case, precision, args.dropout, sample_batch, device, seed))
    if "lucidrains" in peers:
        sides.append(lucidrains_side(case, precision, args.dropout, sample_batch, device, seed, sides[0].parameters))
    return sides


def run_cell(case: Case, precision: str, args: argparse.Namespace, device: torch.device,
             peers: list[str], flops: dict[tuple[str, str], tuple[int, int]]) -> dict[str, Any]:
    """One case in one precision: FLOPs (counted once per case, in fp32), then the rounds."""
    sample_batch = 2 if args.quick else SAMPLE_BATCH
    if args.quick:
        case = dataclasses.replace(case, train_batch=4)
    if not all((case.name, p) in flops for p in peers + ["ours"]):
        for side in build_sides(case, "fp32", args, device, peers, sample_batch):
            flops[case.name, side.name] = flops_per_image(side, case.train_batch, sample_batch)
    sides = build_sides(case, precision, args, device, peers, sample_batch)
    for side in sides:
        side.train_flops, side.sample_flops = flops[case.name, side.name]
    times: dict[str, dict[str, list[float]]] = {s.name: {"train": [], "sample": []} for s in sides}
    for kind in ("train", "sample"):
        steps = args.steps if kind == "train" else args.sample_steps
        for _ in range(args.rounds):
            for side in sides:
                times[side.name][kind].append(timed_round(getattr(side, kind), steps, device))
    cell = {"case": case.name, "shape": case.shape, "precision": precision, "train_batch": case.train_batch,
            "sample_batch": sample_batch, "load_avg": load_average(), "sides": {}}
    for side in sides:
        cell["sides"][side.name] = {
            "parameters": side.parameters, "train_flops_per_image": side.train_flops,
            "sample_flops_per_image": side.sample_flops,
            "train_img_per_s": [case.train_batch / s for s in times[side.name]["train"]],
            "sample_ms": [1e3 * s for s in times[side.name]["sample"]]}
    if "diffusers" in cell["sides"]:
        ours_t, peer_t = times["ours"], times["diffusers"]
        cell["ratio_train"] = [p / o for o, p in zip(ours_t["train"], peer_t["train"], strict=True)]
        cell["ratio_sample"] = [p / o for o, p in zip(ours_t["sample"], peer_t["sample"], strict=True)]
    return cell


# ---------------------------------------------------------------------- output
def fmt(xs: list[float], digits: int = 1) -> str:
    r = median_range(xs)
    return f"{r['median']:.{digits}f} [{r['min']:.{digits}f}-{r['max']:.{digits}f}]"


def print_cell(cell: dict[str, Any], peaks: dict[str, float]) -> None:
    names = list(cell["sides"])
    peak = peaks[cell["precision"]]
    shape = "x".join(map(str, cell["shape"]))
    print(f"\n{cell['case']} {shape}, {cell['precision']} (load average {cell['load_avg']:.2f} at the end of the cell)")
    print(f"  {'':<34}" + "".join(f"{n:>26}" for n in names) + f"{'ours/diffusers':>22}")
    print(f"  {'parameters':<34}" + "".join(f"{cell['sides'][n]['parameters']:>26,}" for n in names))
    for kind, label, key, batch in (("train", f"train img/s, batch {cell['train_batch']}", "train_img_per_s",
                                     cell["train_batch"]),
                                    ("sample", f"sample ms/step, batch {cell['sample_batch']}", "sample_ms",
                                     cell["sample_batch"])):
        ratio = fmt(cell[f"ratio_{kind}"], 2) + "x" if f"ratio_{kind}" in cell else ""
        print(f"  {label:<34}" + "".join(f"{fmt(cell['sides'][n][key]):>26}" for n in names) + f"{ratio:>22}")
        flops = [cell["sides"][n][f"{kind}_flops_per_image"] for n in names]
        print(f"  {'  GFLOP/image':<34}" + "".join(f"{f / 1e9:>26.3f}" for f in flops))
        rates = [statistics.median(cell["sides"][n][key]) for n in names]
        per_s = [f * r for f, r in zip(flops, rates, strict=True)] if kind == "train" else \
            [f * batch / (r / 1e3) for f, r in zip(flops, rates, strict=True)]
        print(f"  {'  % of measured peak':<34}" + "".join(f"{100 * p / peak:>25.1f}%" for p in per_s))


def print_summary(cells: list[dict[str, Any]]) -> None:
    print("\nSummary: ours/diffusers speed ratio, median [min-max] over paired rounds (>= 1: ours faster)")
    for c in cells:
        if "ratio_train" not in c:
            continue
        label = f"{c['case']} {'x'.join(map(str, c['shape']))}"
        for kind in ("train", "sample"):
            r = c[f"ratio_{kind}"]
            verdict = "ok" if statistics.median(r) >= 1.0 else "SLOWER"
            print(f"  {kind:<6} {label:<22} {c['precision']:<5} {fmt(r, 2)}x  {verdict}")


def profile_cell(case: Case, precision: str, args: argparse.Namespace, device: torch.device, rows: int) -> None:
    """torch.profiler tables (top ops by self CPU time) of ours, and with --profile-peers of
    diffusers, over a few training and sampling steps."""
    from torch.profiler import ProfilerActivity, profile

    sample_batch = 2 if args.quick else SAMPLE_BATCH
    sides = [ours(case, precision, args.dropout, sample_batch, device, 0)]
    if args.profile_peers and diffusers_available() is None:
        sides.append(diffusers_side(case, precision, args.dropout, sample_batch, device, 0))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for side in sides:
        for kind, steps in (("train", 2), ("sample", 5)):
            fn = getattr(side, kind)
            fn()
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    fn()
                sync(device)
            shape = "x".join(map(str, case.shape))
            print(f"\nprofile: {side.name} {kind} {shape} {precision} ({steps} steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 step, tiny batches")
    parser.add_argument("--cases", default="mnist,cifar10", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--peers", default="diffusers,lucidrains", help="comma-separated: diffusers, lucidrains")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per cell")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--sample-steps", type=int, default=5, help="timed sampling steps per round")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout of every side's network")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of ours")
    parser.add_argument("--profile-peers", action="store_true", help="with --profile: diffusers too")
    parser.add_argument("--profile-only", action="store_true", help="print the profiles and time nothing")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.sample_steps = 1, 1, 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cases = [CASES[c.strip()] for c in args.cases.split(",") if c.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise SystemExit(f"--precisions {args.precisions!r}: accepted: {', '.join(PRECISIONS)}")
    device = resolve_device(args.device)
    peers = []
    for peer in (p.strip() for p in args.peers.split(",") if p.strip()):
        missing = {"diffusers": diffusers_available, "lucidrains": peer_available}[peer]()
        if missing is None:
            peers.append(peer)
        else:
            print(f"{peer}: not measured ({missing}); pip install -e '.[bench]'")

    load = load_average()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"bench_peers: device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, load average {load:.2f}"
          + (", quick" if args.quick else ""))
    if machine_is_busy(device, load):
        print(f"WARNING: load average {load:.2f}: absolute figures are slow and noisy; read the paired ratios")
    if args.profile_only:
        for case in cases:
            for precision in precisions:
                profile_cell(case, precision, args, device, rows=25)
        return 0
    n = 512 if args.quick else 2048
    peaks = {p: peak_flops(PRECISIONS[p], device, n, 2 if args.quick else 5) for p in precisions}
    print("measured peak (best of large matmuls): "
          + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items()))
    print(f"rounds {args.rounds}, {args.steps} timed train steps and {args.sample_steps} timed sample steps per "
          f"round and side (each after one untimed call); dropout {args.dropout} on every side")

    t0 = time.perf_counter()
    cells: list[dict[str, Any]] = []
    flops: dict[tuple[str, str], tuple[int, int]] = {}
    for case in cases:
        for precision in precisions:
            cells.append(run_cell(case, precision, args, device, peers, flops))
            print_cell(cells[-1], peaks)
    print_summary(cells)
    end = load_average()
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; load average {load:.2f} at the start, {end:.2f} at the end")
    if args.profile:
        for case in cases:
            for precision in precisions:
                profile_cell(case, precision, args, device, rows=25)
    if args.json:
        atomic_write_json(args.json, {"peaks": peaks, "cells": cells, "load_avg": [load, end]})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
