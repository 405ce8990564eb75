"""Core speed figures of the ddpm package, measured side by side in one run.

What it measures (on ``--device``, default ``auto``: CUDA when available, else the CPU):

1. **Bound vs. network.** The throughput of the full variational bound
   (``GaussianDiffusion.bpd`` over all T = 1000 timesteps, per-image generators as in the
   evaluate stage) for the default digits U-Net (``Params.from_dict({})``, 8x8, K = 17),
   in image-timesteps per second, against plain forward passes of the same network
   (eval, ``torch.no_grad``) on exactly the network batches the bound makes. The two are
   timed alternately (A, B, A, B, ...) and medians are reported, since a shared machine is
   noisy; the overhead is ``bound time per image-timestep / forward time per image - 1``.
   With 300 test images the evaluate stage feeds the network 300 images per call at
   ``evaluate.batch_size=512`` (one timestep per call), 900 at 1024 and 1800 at 2048. Each
   row reproduces that network batch with fewer images and more timesteps per call
   (e.g. 12 images x 25 timesteps = 300 per call), which runs the same code per call,
   so a repeat takes seconds rather than a minute.
2. **The evaluate stage's bound.** The wall time of the evaluate stage's own code path,
   ``ddpm.evaluation.bound.evaluation_inputs`` + ``bound_per_example`` + ``summarize_bound`` (one
   process, no torchrun), over 300 random 8x8 images on the 17-level grid, T = 1000,
   ``batch_size=512``, timed once.
3. **U-Net size and speed.** Parameter count and forward time (batch 64, eval, no_grad,
   median of several runs) of the default U-Nets for digits (1x8x8), mnist (1x28x28) and
   cifar10 (3x32x32), from ``DATASET_DEFAULTS``.

TF32 is off on CUDA throughout, as in the evaluate stage. Weights are random (speed does
not depend on them); the zero-initialised output conv gets
PyTorch's default init so that the network's outputs are nonzero. Nothing is written
unless ``--json PATH`` is given.

Run from the repository root::

    python benchmarks/bench_core.py                 # full run, about 3-5 minutes on 2 CPU cores
    python benchmarks/bench_core.py --quick         # smoke run: 1 repeat, 30 images in (2)
    python benchmarks/bench_core.py --device cuda --json /tmp/bench.json
    python benchmarks/bench_core.py --threads 1 --profile   # + where the bound's time goes
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch
from _common import (
    environment,
    eval_network,
    fmt_range,
    load_average,
    machine_is_busy,
    median_range,
    random_levels,
    sync,
    timed,
)
from torch import nn

from ddpm import seeding
from ddpm.config import Params
from ddpm.data import to_model_space
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.bound import bound_per_example, evaluation_inputs, summarize_bound
from ddpm.io import atomic_write_json
from ddpm.nn import count_parameters
from ddpm.pipeline.build import build_diffusion
from ddpm.pipeline.runtime import resolve_device, set_tf32

DIGITS_META = {"kind": "image", "shape": [1, 8, 8], "num_levels": 17}
UNET_CASES = (  # dataset, meta shape, grey levels
    ("digits", (1, 8, 8), 17),
    ("mnist", (1, 28, 28), 256),
    ("cifar10", (3, 32, 32), 256),
)
# (evaluate.batch_size, images in the timed bound, max_batch): with 300 test images the
# evaluate stage's network batch is (batch_size // 300) * 300; each row reproduces it.
BOUND_CASES = ((512, 12, 300), (1024, 9, 900), (2048, 9, 1800))
TEST_IMAGES = 300


def bound_generators(seed: int, n: int, device: torch.device) -> list[torch.Generator]:
    """One generator per image, as the evaluate stage draws the bound's noise."""
    return seeding.generators(seed, "bound", range(n), device)


def bound_call_batches(n: int, max_batch: int, T: int) -> list[int]:
    """The network batch of each call ``variational_bound`` makes for ``n`` images."""
    k = max(1, max_batch // n)
    return [n * min(k, T - s) for s in range(0, T, k)]


# ---------------------------------------------------------------------- 1. bound vs network
def bench_bound_vs_forward(net: nn.Module, diffusion, device: torch.device, reps: int,
                           seed: int) -> list[dict[str, Any]]:
    return [bound_vs_forward_case(net, diffusion, device, reps, seed, *case) for case in BOUND_CASES]


def bound_vs_forward_case(net: nn.Module, diffusion, device: torch.device, reps: int, seed: int,
                          eval_batch: int, n: int, max_batch: int) -> dict[str, Any]:
    T = diffusion.num_timesteps
    x0 = torch.as_tensor(to_model_space(random_levels(n, (1, 8, 8), 17, seed), 17)).to(device)
    batches = bound_call_batches(n, max_batch, T)
    call_batch = batches[0]
    assert call_batch == (eval_batch // TEST_IMAGES) * TEST_IMAGES, (call_batch, eval_batch)
    # Inputs of the plain forward: the same batches, x_t-like noise, random timesteps.
    g = torch.Generator(device="cpu").manual_seed(seed)
    xs = torch.randn(call_batch, 1, 8, 8, generator=g).to(device)
    ts = [torch.randint(0, T, (b,), generator=g).to(device) for b in batches]

    def bound() -> None:
        diffusion.bpd(net, x0, num_levels=17, clip_denoised=True, generator=bound_generators(seed, n, device),
                      max_batch=max_batch)

    @torch.no_grad()
    def forward() -> None:
        for b, t in zip(batches, ts, strict=True):
            net(xs[:b], t)

    # Warm-up: every forward shape once, and the bound's code path once (one network call
    # of the full batch, through a copy of the diffusion cut to that call's timesteps).
    forward()
    short = GaussianDiffusion(diffusion.betas[:max_batch // n], mean_type=diffusion.mean_type,
                              var_type=diffusion.var_type)
    short.bpd(net, x0, num_levels=17, generator=bound_generators(seed, n, device), max_batch=max_batch)
    a_times, b_times = [], []
    for _ in range(reps):
        a_times.append(timed(bound, device))
        b_times.append(timed(forward, device))
    img_t = n * T
    a = statistics.median(a_times) / img_t
    b = statistics.median(b_times) / img_t
    return {
        "evaluate_batch_size": eval_batch, "network_batch": call_batch, "images": n,
        "timesteps": T, "max_batch": max_batch, "network_calls": len(batches),
        "image_timesteps": img_t,
        "bound_s": median_range(a_times), "forward_s": median_range(b_times),
        "bound_img_t_per_s": 1.0 / a, "forward_img_per_s": 1.0 / b,
        "bound_overhead_pct": 100.0 * (a / b - 1.0),
    }


# ---------------------------------------------------------------------- 2. evaluate stage
def bench_evaluate(net: nn.Module, diffusion, device: torch.device, num_images: int, batch_size: int,
                   seed: int) -> dict[str, Any]:
    test = random_levels(num_images, (1, 8, 8), 17, seed + 1)
    report: dict[str, Any] = {}

    def run() -> None:  # what stages/evaluate.py does in one process
        x_all = evaluation_inputs(test, DIGITS_META, num_images=0)
        parts = bound_per_example(diffusion, net, x_all, DIGITS_META, batch_size=batch_size, clip_denoised=True,
                                  seed=seed, device=device)
        report.update(summarize_bound(parts, DIGITS_META, clip_denoised=True))

    seconds = timed(run, device)
    img_t = num_images * diffusion.num_timesteps
    chunk = min(num_images, batch_size)  # images per bpd call; timesteps fill up to batch_size
    return {"images": num_images, "timesteps": diffusion.num_timesteps, "batch_size": batch_size,
            "network_batch": chunk * max(1, batch_size // chunk),
            "seconds": seconds, "img_t_per_s": img_t / seconds, "bpd_total": report["bpd"]["total"]}


# ---------------------------------------------------------------------- 3. U-Nets
def bench_unets(device: torch.device, runs: int, batch: int, seed: int) -> list[dict[str, Any]]:
    rows = [unet_case(device, runs, batch, seed, *case) for case in UNET_CASES]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def unet_case(device: torch.device, runs: int, batch: int, seed: int, name: str, shape: tuple[int, ...],
              levels: int) -> dict[str, Any]:
    params = Params.from_dict({"dataset": name})
    torch.manual_seed(seed)
    net = eval_network(params, {"kind": "image", "shape": list(shape), "num_levels": levels}, device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g).to(device)
    t = torch.randint(0, params.diffusion.timesteps, (batch,), generator=g).to(device)

    @torch.no_grad()
    def forward() -> None:
        net(x, t)

    forward()  # warm-up
    times = [timed(forward, device) for _ in range(runs)]
    m = params.model
    return {"dataset": name, "shape": list(shape), "parameters": count_parameters(net),
            "base_channels": m.base_channels, "channel_mult": list(m.channel_mult),
            "num_res_blocks": m.num_res_blocks, "attn_resolutions": list(m.attn_resolutions),
            "batch": batch, "forward_s": median_range(times), "img_per_s": batch / statistics.median(times)}


# ---------------------------------------------------------------------- profile (optional)
def profile_bound(net: nn.Module, diffusion, device: torch.device, seed: int) -> None:
    """torch.profiler table of one bound call at the evaluate stage's network batch."""
    from torch.profiler import ProfilerActivity, profile

    _, n, max_batch = BOUND_CASES[0]
    x0 = torch.as_tensor(to_model_space(random_levels(n, (1, 8, 8), 17, seed), 17)).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        diffusion.bpd(net, x0, num_levels=17, generator=bound_generators(seed, n, device),
                      max_batch=max_batch)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nProfile of one bound call ({n} images x T={diffusion.num_timesteps}, max_batch={max_batch}):")
    print(prof.key_averages().table(sort_by=sort, row_limit=25))


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 30 images in (2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--reps", type=int, default=0, help="alternating repeats in (1) (default 5, quick 1)")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of the bound")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_tf32(False)  # as the evaluate stage does: full float32 on CUDA
    seed = 0
    reps = args.reps or (1 if args.quick else 5)
    unet_runs = 1 if args.quick else 5
    eval_images = 30 if args.quick else TEST_IMAGES

    params = Params.from_dict({})  # the digits defaults
    torch.manual_seed(seed)
    net = eval_network(params, DIGITS_META, device)
    diffusion = build_diffusion(params)
    T = diffusion.num_timesteps
    batch_size = params.evaluate.batch_size

    env = environment(device, args.quick)
    if device.type == "cuda":
        env["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    load = env["load_avg_start"]
    print(f"ddpm core benchmark: device={env['device']} ({env['device_name']}), torch {env['torch']}, "
          f"threads={env['threads']} of {env['cpu_count']} CPUs"
          + (f", load average {load:.2f}" if load is not None else "")
          + (f", cuDNN TF32={'on' if env['cudnn_tf32'] else 'off'}" if device.type == "cuda" else "")
          + (", quick" if args.quick else ""))
    if machine_is_busy(device, load):
        print(f"WARNING: the machine is busy before the benchmark starts (load average {load:.2f} on "
              f"{os.cpu_count()} CPUs): CPU timings will be slow and noisy, with {env['threads']} torch "
              "threads competing for cores; compare only figures from the same run.")
    print(f"digits U-Net: {count_parameters(net):,} parameters, T={T}, {params.diffusion.beta_schedule} betas, "
          f"mean_type={params.diffusion.mean_type}, var_type={params.diffusion.var_type}, K=17, clip_denoised=True")
    print("Times are wall seconds, median [min-max] over the repeats.\n")

    t_start = time.perf_counter()
    bound_rows = bench_bound_vs_forward(net, diffusion, device, reps, seed)
    print(f"1. Full bound (diffusion.bpd, all T={T} terms, per-image generators) vs plain forward passes on the same")
    print(f"   network batches, alternated bound/forward x{reps}. "
          "'timed': images x timesteps, network calls per repeat.")
    print("   eval     net   | timed                   | bound s/repeat          | forward s/repeat        |"
          " bound      forward  | bound")
    print("   batch    batch |                         | median [min-max]        | median [min-max]        |"
          " img-t/s    img/s    | overhead")
    for r in bound_rows:
        timed_what = f"{r['images']} x {r['timesteps']}, {r['network_calls']} calls"
        print(f"   {r['evaluate_batch_size']:<8} {r['network_batch']:>5} | {timed_what:<23} | "
              f"{fmt_range(r['bound_s']):<23} | {fmt_range(r['forward_s']):<23} | "
              f"{r['bound_img_t_per_s']:>8,.0f} {r['forward_img_per_s']:>9,.0f} | {r['bound_overhead_pct']:+7.1f}%")
    print("   eval batch: evaluate.batch_size; net batch: images per network call that the evaluate stage makes\n"
          "   with 300 test images at that batch_size. Each row runs bpd on fewer images with more timesteps per\n"
          "   call, which gives the same network batch (the same per-call code) in a fraction of the time.\n"
          "   overhead = (bound s per image-timestep) / (forward s per image) - 1.")

    ev = bench_evaluate(net, diffusion, device, eval_images, batch_size, seed)
    fwd_300 = next(r for r in bound_rows if r["evaluate_batch_size"] == batch_size)
    net_only = ev["images"] * T / fwd_300["forward_img_per_s"] if ev["images"] == TEST_IMAGES else None
    ev["network_only_estimate_s"] = net_only
    print("\n2. The evaluate stage's bound (ddpm.evaluation.bound evaluation_inputs + bound_per_example + "
          "summarize_bound),\n"
          f"   {ev['images']} random 8x8 images (K=17), T={T}, batch_size={batch_size} "
          f"({ev['network_batch']} images per network call), timed once")
    line = (f"   wall {ev['seconds']:.2f} s = {ev['img_t_per_s']:,.0f} image-timesteps/s "
            f"(bpd of the random net: {ev['bpd_total']:.3f})")
    if net_only is not None:
        line += f"; the network alone at (1)'s median rate: {net_only:.2f} s"
    print(line)

    unet_rows = bench_unets(device, unet_runs, 64, seed)
    print(f"\n3. Default U-Nets: forward pass, batch 64, eval, no_grad, median of {unet_runs}")
    print("   dataset  shape    |  parameters | ch   mult          blocks attn  | forward s/batch          | img/s")
    for r in unet_rows:
        shape = "x".join(map(str, r["shape"]))
        mult = ",".join(map(str, r["channel_mult"]))
        attn = ",".join(map(str, r["attn_resolutions"])) or "-"
        print(f"   {r['dataset']:<8} {shape:<8} | {r['parameters']:>11,} | {r['base_channels']:<4} {mult:<13} "
              f"{r['num_res_blocks']:>6} {attn:<5} | {fmt_range(r['forward_s']):<24} | {r['img_per_s']:>8,.0f}")
    total = time.perf_counter() - t_start
    env["load_avg_end"] = load = load_average()
    print(f"\nbenchmark wall time: {total:.1f} s" + (f" (load average now {load:.2f})" if load is not None else ""))

    if args.profile:
        profile_bound(net, diffusion, device, seed)

    if args.json:
        atomic_write_json(args.json, {"env": env, "bound_vs_forward": bound_rows, "evaluate_stage_bound": ev,
                                      "unets": unet_rows, "wall_s": total})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
