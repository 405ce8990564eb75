"""Training, sampling and bound throughput of the default image U-Nets, ours against
lucidrains' denoising-diffusion-pytorch at a matched parameter count, in one run.

For the default MNIST-size U-Net (``Params.from_dict({"dataset": "mnist"})``: 1x28x28,
K = 256) and the default CIFAR-10-size U-Net (``dataset: cifar10``: 3x32x32, DDPM's
35.7M-parameter model), on ``--device`` (``auto``: CUDA when available, else the CPU):

1. **Training throughput, images/s.** Ours is measured by calling ``ddpm.training.loop.train``
   itself (the real loop: ``training_losses`` under the autocast of ``ddpm.pipeline.runtime``,
   backward, ``clip_grad_norm_``, Adam, the EMA update, and whatever the loop does on
   this device, e.g. channels-last and TF32 on CUDA) on random grey levels of the right
   shape; the time is taken between its log callbacks after the warmup steps, so model
   construction is excluded. The peer's step is its ``Trainer.train`` step: the
   ``GaussianDiffusion`` forward (loss, ``loss.item()``) under the same autocast,
   backward, ``clip_grad_norm_(1.0)``, ``Adam(betas=(0.9, 0.99))`` and
   ``ema_pytorch.EMA(beta=0.995, update_every=10)`` (its Trainer's settings; EMA in its
   steady state, ``update_after_step=0``). Same batch, image size, T = 1000, linear betas,
   eps prediction and dropout. Data come from a tensor already on the device for both.
   Precision: ours trains under ``train.precision`` as resolved on this device (``auto``:
   bf16 autocast on CUDA and on CPUs with bf16 units, i.e. AMX or AVX512-BF16; else fp32),
   and the peer under the same autocast. Where that is not fp32, the peer is also measured
   at its own default, fp32 (its Trainer's ``amp=False``), the figure a user running both
   with their defaults sees; both ratios are printed.
2. **Sampling, network evaluations/s.** One ancestral step (``p_sample``) on a batch is
   ``batch`` NFEs. Ours: ``GaussianDiffusion.p_sample`` with one generator per image, as
   ``ddpm.sampling.runner.draw_samples`` (the sample stage) does; the peer's: its ``p_sample``
   (one step per call). Both in float32 without autocast, eval mode, as the sample stages
   run.
3. **Bound, image-timesteps/s (ours only; the peer has no bound).** The full bound costs T
   network calls per image. On CUDA ``diffusion.bpd`` runs over all T = 1000 timesteps
   for a few images at the evaluate stage's network batch (512). On the CPU that would
   take minutes per image for the CIFAR model, so ``bpd`` runs on the diffusion cut to
   its first ``k`` timesteps (the same per-call code), and the full-bound time per image
   is extrapolated from the measured rate; the output says which.
4. **Peak memory** of each round: CUDA ``torch.cuda.max_memory_allocated`` above what was
   allocated at the round's start (each round builds its own network, optimizer and EMA,
   so this is the whole training state plus activations). CPU: the peak resident set of
   the whole process during the round (``VmHWM`` reset through ``/proc/self/clear_refs``),
   also shown above the round's starting RSS, and the process's peak over the whole run.
5. **FLOPs and MFU.** ``torch.utils.flop_counter.FlopCounterMode`` counts one training
   step (forward + backward) and one sampling forward per image; achieved FLOP/s = FLOPs
   per image x images/s. MFU divides by ``--peak-tflops`` (default 989, the H100/H200
   dense bf16 peak, when the CUDA device's name says H100 or H200; required on other GPUs;
   optional on the CPU).

The peer's ``Unet`` keeps our ``channel_mult`` as its ``dim_mults`` (the same resolutions)
and its own defaults otherwise (RMSNorm, linear attention at every level but the lowest,
full attention there and in the middle, 4 heads x 32); its ``dim`` is searched for the
parameter count nearest ours (both counts are printed). Ours and the peer's are measured
alternately (ours, peer, ours, peer, ...; each round with its own warmup) and medians
reported, since a shared machine is noisy. Needs the ``bench`` extra
(``pip install -e ".[bench]"``); without it only our figures are printed.

Run from the repository root::

    python benchmarks/bench_train.py                     # CPU: ~2 min on 2 idle cores (14 at load 6)
    python benchmarks/bench_train.py --quick             # smoke run: 1 round, tiny batches
    python benchmarks/bench_train.py --device cuda --json /tmp/bench_train.json   # batch 128, MFU
    python benchmarks/bench_train.py --models cifar10 --set train.channels_last=true --profile

``--set KEY=VALUE`` (repeatable) overrides a params.yaml key for our side (dotted, as in
``dvc exp run -S``), e.g. ``train.channels_last``, ``train.compile``; ``train.precision``
sets the training precision of both sides (``--set train.precision=fp32`` compares fp32
with fp32). ``--profile`` prints a ``torch.profiler`` table
of one training step of each side. On a busy CPU, ``--threads 1`` gives steadier figures
(two threads competing for loaded cores can run several times slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import yaml
from _common import (
    environment,
    eval_network,
    fmt_range,
    load_average,
    machine_is_busy,
    median_range,
    random_levels,
    sync,
    timed_steps,
)
from _memory import MemoryMeter, run_peak_rss_mib
from _peer import (
    PEER_ADAM_BETAS,
    PEER_EMA,
    PEER_MAX_GRAD_NORM,
    build_peer,
    count_flops,
    match_peer_dim,
    peer_available,
    peer_flops,
    peer_sample_round,
    peer_train_round,
)
from torch import nn

from ddpm import seeding
from ddpm.config import Params
from ddpm.data import to_model_space
from ddpm.diffusion import GaussianDiffusion
from ddpm.io import atomic_write_json
from ddpm.nn import count_parameters
from ddpm.pipeline.build import build_diffusion, build_network
from ddpm.pipeline.runtime import autocast, flush_denormals, precision_name, resolve_device, resolve_precision
from ddpm.training.loop import setup_training, train, train_step

MODELS = {"mnist": ((1, 28, 28), 256), "cifar10": ((3, 32, 32), 256)}
EVAL_MAX_BATCH = 512               # the evaluate stage's default network batch
H100_H200_BF16_TFLOPS = 989.0      # dense bf16 tensor-core peak (SXM)


@dataclasses.dataclass(frozen=True)
class Settings:
    batch: int            # training and sampling batch
    warmup: int           # unmeasured training steps per round
    steps: int            # measured training steps per round
    rounds: int           # alternating rounds (ours, peer) per figure
    sample_warmup: int
    sample_steps: int     # measured p_sample calls per round
    bound_images: int
    bound_timesteps: int  # 0 = all T (CUDA); else the diffusion cut to its first k steps
    bound_rounds: int


def settings_for(device: torch.device, quick: bool, batch: int, steps: int, rounds: int) -> Settings:
    if device.type == "cuda":
        s = Settings(batch=128, warmup=5, steps=20, rounds=5, sample_warmup=3, sample_steps=20,
                     bound_images=16, bound_timesteps=0, bound_rounds=3)
        if quick:
            s = Settings(batch=32, warmup=2, steps=5, rounds=1, sample_warmup=1, sample_steps=5,
                         bound_images=4, bound_timesteps=128, bound_rounds=1)
    else:
        s = Settings(batch=16, warmup=1, steps=2, rounds=3, sample_warmup=1, sample_steps=3,
                     bound_images=4, bound_timesteps=8, bound_rounds=3)
        if quick:
            s = Settings(batch=4, warmup=1, steps=1, rounds=1, sample_warmup=1, sample_steps=1,
                         bound_images=2, bound_timesteps=2, bound_rounds=1)
    given = {"batch": batch, "steps": steps, "rounds": rounds}
    return dataclasses.replace(s, **{k: v for k, v in given.items() if v})


# ---------------------------------------------------------------------- environment


def set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def tf32_flags() -> str:
    return (f"matmul TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, "
            f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}")


# ---------------------------------------------------------------------- configs and models
def parse_sets(items: list[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train.channels_last=true")
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return raw


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def our_params(name: str, overrides: dict[str, Any], train_over: dict[str, Any] | None = None) -> Params:
    raw = merge({"dataset": name}, overrides)
    if train_over:
        raw = merge(raw, {"train": train_over})
    return Params.from_dict(raw)


def meta_for(name: str) -> dict[str, Any]:
    shape, levels = MODELS[name]
    return {"kind": "image", "shape": list(shape), "num_levels": levels}


# ---------------------------------------------------------------------- training rounds
def ours_train_round(name: str, overrides: dict[str, Any], s: Settings, device: torch.device,
                     seed: int) -> dict[str, Any]:
    """One call of ddpm.training.loop.train: warmup steps, then the timed steps."""
    total = s.warmup + s.steps
    params = our_params(name, overrides, {"steps": total, "batch_size": s.batch, "log_every": s.warmup,
                                          "checkpoint_every": 10**9})
    meta = meta_for(name)
    shape, levels = MODELS[name]
    levels_np = random_levels(4 * s.batch, shape, levels, seed, dtype=np.uint8)
    stamps: dict[int, float] = {}

    def on_log(step: int, row: dict[str, float]) -> None:
        stamps[step] = time.perf_counter()  # after the loop's .item(): the device is idle here

    with MemoryMeter(device) as mem:
        result = train(params, levels_np, meta, device, on_log=on_log, progress=False)
        sync(device)
    seconds = stamps[total] - stamps[s.warmup]
    del result
    return {"seconds": seconds, "img_per_s": s.steps * s.batch / seconds, "peak_mib": mem.peak_mib,
            "peak_abs_mib": mem.peak_abs_mib}


# ---------------------------------------------------------------------- sampling rounds
@torch.no_grad()
def ours_sample_round(params: Params, name: str, s: Settings, device: torch.device, seed: int) -> dict[str, Any]:
    shape, _ = MODELS[name]
    with MemoryMeter(device) as mem:
        torch.manual_seed(seed)
        net = eval_network(params, meta_for(name), device)
        diffusion = build_diffusion(params)
        T = diffusion.num_timesteps
        gens = seeding.generators(seed, "sample", range(s.batch), device)  # per image, as the sample stage
        x = seeding.randn((s.batch, *shape), gens, device)
        t = T - 1

        def step() -> None:
            nonlocal x, t
            tt = torch.full((s.batch,), t, device=device, dtype=torch.long)
            x = diffusion.p_sample(net, x, tt, generator=gens, clip_denoised=True)["sample"]
            t -= 1

        seconds = timed_steps(step, s.sample_warmup, s.sample_steps, device)
    return {"seconds": seconds, "nfe_per_s": s.sample_steps * s.batch / seconds, "peak_mib": mem.peak_mib,
            "peak_abs_mib": mem.peak_abs_mib}


# ---------------------------------------------------------------------- bound
def bench_bound(params: Params, name: str, s: Settings, device: torch.device, seed: int) -> dict[str, Any]:
    shape, levels = MODELS[name]
    torch.manual_seed(seed)
    net = eval_network(params, meta_for(name), device)
    diffusion = build_diffusion(params)
    T = diffusion.num_timesteps
    n = s.bound_images
    k = T if s.bound_timesteps <= 0 else min(s.bound_timesteps, T)
    max_batch = EVAL_MAX_BATCH if k == T else n * k
    levels_np = random_levels(n, shape, levels, seed)
    x0 = torch.as_tensor(to_model_space(levels_np, levels)).to(device)

    def cut(steps: int) -> GaussianDiffusion:
        d = params.diffusion
        return diffusion if steps == T else GaussianDiffusion(diffusion.betas[:steps], mean_type=d.mean_type,
                                                              var_type=d.var_type)

    timed_diffusion = cut(k)

    def run(diff: GaussianDiffusion) -> None:
        diff.bpd(net, x0, num_levels=levels, clip_denoised=True, max_batch=max_batch,
                 generator=seeding.generators(seed, "bound", range(n), device))

    run(cut(min(k, max(1, max_batch // n))))  # warmup: one network call of the timed batch
    times = []
    for _ in range(s.bound_rounds):
        sync(device)
        t0 = time.perf_counter()
        run(timed_diffusion)
        sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rate = n * k / med
    return {"images": n, "timesteps_timed": k, "T": T, "full_T": k == T, "max_batch": max_batch,
            "network_batch": n * max(1, min(k, max_batch // n)), "seconds": median_range(times),
            "img_t_per_s": rate, "full_bound_s_per_image": T / rate}


# ---------------------------------------------------------------------- FLOPs


def our_step(params: Params, name: str, batch: int, device: torch.device, seed: int) -> Callable[[], None]:
    """One call of ``ddpm.training.loop.train_step`` (the loop's own step, set up as ``train`` sets
    it up) on a random batch of ``batch`` images."""
    shape, _ = MODELS[name]
    trainer = setup_training(params, meta_for(name), device)
    trainer.state.model.train()
    g = torch.Generator(device="cpu").manual_seed(seed)
    x0 = (torch.rand(batch, *shape, generator=g) * 2 - 1).to(device)
    t = torch.randint(0, trainer.diffusion.num_timesteps, (batch,), generator=g).to(device)
    noise = torch.randn(batch, *shape, generator=g).to(device)

    def step() -> None:
        with flush_denormals(device):  # as train() runs its steps
            train_step(trainer, x0, t, noise)

    return step


def our_flops(params: Params, name: str, device: torch.device) -> dict[str, int]:
    """FLOPs per image of one training step (forward + backward; Adam, clipping and the EMA
    update are elementwise and not counted) and one sampling forward."""
    shape, _ = MODELS[name]
    step = our_step(params, name, 1, device, seed=0)
    net = build_network(params, meta_for(name)).to(device).eval()
    x0 = torch.rand(1, *shape, device=device) * 2 - 1

    def forward() -> None:
        with torch.no_grad():
            net(x0, torch.zeros(1, dtype=torch.long, device=device))

    return {"train": count_flops(step), "forward": count_flops(forward)}


# ---------------------------------------------------------------------- profile (optional)
def profile_steps(name: str, overrides: dict[str, Any], peer: dict[str, Any] | None, s: Settings,
                  device: torch.device, amp_dtype: torch.dtype) -> None:
    """torch.profiler tables of one training step each: ours is ddpm.training.loop.train_step,
    the peer's is its Trainer step."""
    from torch.profiler import ProfilerActivity, profile

    shape, _ = MODELS[name]
    ours = our_step(our_params(name, overrides, {"batch_size": s.batch}), name, s.batch, device, seed=0)
    sides: list[tuple[str, Callable[[], None]]] = [("ours", ours)]
    if peer is not None:
        from ema_pytorch import EMA

        model = build_peer(shape, peer["dim"], peer["mults"], peer["dropout"], peer["timesteps"]).to(device).train()
        popt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=PEER_ADAM_BETAS)
        pema = EMA(model, update_after_step=0, **PEER_EMA)
        pema.to(device)
        data = torch.rand(s.batch, *shape, device=device)

        def theirs() -> None:
            with autocast(device, amp_dtype):
                loss = model(data)
                loss.item()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), PEER_MAX_GRAD_NORM)
            popt.step()
            popt.zero_grad()
            pema.update()

        sides.append(("peer", theirs))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for label, fn in sides:
        fn()
        fn()  # warm
        sync(device)
        with profile(activities=activities) as prof:
            fn()
            sync(device)
        print(f"\nProfile of one training step, {label}, {name}, batch {s.batch}:")
        print(prof.key_averages().table(sort_by=sort, row_limit=22))


# ---------------------------------------------------------------------- per model
def run_model(name: str, overrides: dict[str, Any], s: Settings, device: torch.device, peer_ok: bool,
              peak_tflops: float | None, seed: int) -> dict[str, Any]:
    shape, levels = MODELS[name]
    params = our_params(name, overrides)
    m, tc = params.model, params.train
    amp_dtype = resolve_precision(tc.precision, device)
    T = params.diffusion.timesteps
    torch.manual_seed(seed)
    ours_params = count_parameters(build_network(params, meta_for(name)))
    row: dict[str, Any] = {
        "model": name, "shape": list(shape), "num_levels": levels, "T": T,
        "ours": {"parameters": ours_params, "base_channels": m.base_channels, "channel_mult": list(m.channel_mult),
                 "num_res_blocks": m.num_res_blocks, "attn_resolutions": list(m.attn_resolutions),
                 "dropout": m.dropout},
        "precision": precision_name(amp_dtype), "settings": dict(s.__dict__),
    }
    peer: dict[str, Any] | None = None
    if peer_ok:
        mults = tuple(m.channel_mult)
        dim, count = match_peer_dim(shape, mults, ours_params)
        peer = {"dim": dim, "mults": mults, "dropout": float(m.dropout), "timesteps": T, "parameters": count,
                "param_ratio": count / ours_params}
        row["peer"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in peer.items()}

    print(f"\n=== {name}: {'x'.join(map(str, shape))}, K={levels}, T={T}, batch {s.batch}, "
          f"training precision {row['precision']} ===")
    print(f"ours: UNet ch {m.base_channels}, mult {tuple(m.channel_mult)}, {m.num_res_blocks} res blocks, "
          f"attn at {tuple(m.attn_resolutions)} + middle, dropout {m.dropout}: {ours_params:,} parameters")
    if peer is not None:
        print(f"peer: denoising_diffusion_pytorch Unet(dim={peer['dim']}, dim_mults={peer['mults']}, "
              f"dropout={peer['dropout']}): {peer['parameters']:,} parameters "
              f"({100 * (peer['param_ratio'] - 1):+.1f}% vs ours)")

    # 1. training, alternating
    if device.type == "cuda":
        set_tf32(tc.tf32, tc.tf32)  # what train() sets; the peer runs under the same flags
    # The peer under our precision ("peer"), and at its own default fp32 ("peer_fp32") when
    # ours is not fp32: ours, peer, peer_fp32, ours, ... in turn.
    peer_sides = {} if peer is None else {"peer": amp_dtype}
    if peer is not None and amp_dtype != torch.float32:
        peer_sides["peer_fp32"] = torch.float32
    rounds: dict[str, list[dict[str, Any]]] = {"ours": [], **{side: [] for side in peer_sides}}
    for r in range(s.rounds):
        rounds["ours"].append(ours_train_round(name, overrides, s, device, seed + r))
        print(f"  train round {r + 1}/{s.rounds}: ours {rounds['ours'][-1]['img_per_s']:.2f} img/s", end="", flush=True)
        for side, dtype in peer_sides.items():
            if device.type == "cuda":
                set_tf32(tc.tf32, tc.tf32)
            rounds[side].append(peer_train_round(peer, shape, s, device, dtype, seed + r))
            print(f", {side} ({precision_name(dtype)}) {rounds[side][-1]['img_per_s']:.2f} img/s", end="", flush=True)
        print(flush=True)
    row["train_tf32"] = tf32_flags() if device.type == "cuda" else None
    row["train"] = {side: summarize(rs, "img_per_s") for side, rs in rounds.items()}

    # 2. sampling, alternating; float32 as the sample stage runs (a fresh process: torch's TF32 defaults)
    if device.type == "cuda":
        set_tf32(False, True)
    row["sample_tf32"] = tf32_flags() if device.type == "cuda" else None
    ours_rounds, peer_rounds = [], []
    for r in range(s.rounds):
        ours_rounds.append(ours_sample_round(params, name, s, device, seed + r))
        print(f"  sample round {r + 1}/{s.rounds}: ours {ours_rounds[-1]['nfe_per_s']:.2f} NFE/s", end="", flush=True)
        if peer is not None:
            peer_rounds.append(peer_sample_round(peer, shape, s, device, seed + r))
            print(f", peer {peer_rounds[-1]['nfe_per_s']:.2f} NFE/s", end="")
        print(flush=True)
    row["sample"] = {"ours": summarize(ours_rounds, "nfe_per_s")}
    if peer is not None:
        row["sample"]["peer"] = summarize(peer_rounds, "nfe_per_s")

    # 3. bound (ours), in float32 as the evaluate stage computes it
    if device.type == "cuda":
        set_tf32(False, False)
    row["bound"] = bench_bound(params, name, s, device, seed)
    row["bound_tf32"] = tf32_flags() if device.type == "cuda" else None

    # 4. FLOPs
    fl = {"ours": our_flops(params, name, device)}
    if peer is not None:
        fl["peer"] = peer_flops(peer, shape, device, amp_dtype)
    for side, f in fl.items():
        train_rate = row["train"][side]["rate"]["median"]
        sample_rate = row["sample"][side]["rate"]["median"]
        f["train_tflops_achieved"] = f["train"] * train_rate / 1e12
        f["sample_tflops_achieved"] = f["forward"] * sample_rate / 1e12
        f["train_mfu"] = f["train_tflops_achieved"] / peak_tflops if peak_tflops else None
    row["flops_per_image"] = fl
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print_model(row, device, peak_tflops)
    return row


def summarize(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    peaks = [r["peak_mib"] for r in rounds if r["peak_mib"] is not None]
    peaks_abs = [r["peak_abs_mib"] for r in rounds if r["peak_abs_mib"] is not None]
    return {"rate": median_range([r[key] for r in rounds]), "seconds": [r["seconds"] for r in rounds],
            "peak_mib": max(peaks) if peaks else None, "peak_abs_mib": max(peaks_abs) if peaks_abs else None}


# ---------------------------------------------------------------------- output
def fmt_mem(side: dict[str, Any], device: torch.device) -> str:
    if side["peak_mib"] is None:
        return "n/a"
    if device.type == "cuda":
        return f"{side['peak_mib']:,.0f} MiB"
    return f"{side['peak_abs_mib']:,.0f} MiB (+{side['peak_mib']:,.0f})"


def print_model(row: dict[str, Any], device: torch.device, peak_tflops: float | None) -> None:
    has_peer = "peer" in row["train"]
    s = row["settings"]
    print(f"\n  {'':<44} {'ours':>28} {'peer':>28} {'ours/peer':>10}")

    def line(label: str, ours: str, peer: str = "", ratio: float | None = None) -> None:
        r = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"  {label:<44} {ours:>28} {peer if has_peer else '':>28} {r if has_peer else '':>10}")

    tr, sa = row["train"], row["sample"]
    line(f"train img/s, both {row['precision']} (median [min-max])", fmt_range(tr["ours"]["rate"], 2),
         fmt_range(tr["peer"]["rate"], 2) if has_peer else "",
         tr["ours"]["rate"]["median"] / tr["peer"]["rate"]["median"] if has_peer else None)
    if "peer_fp32" in tr:
        line("train img/s, peer at its default fp32", "", fmt_range(tr["peer_fp32"]["rate"], 2),
             tr["ours"]["rate"]["median"] / tr["peer_fp32"]["rate"]["median"])
    line("sample NFE/s (median [min-max])", fmt_range(sa["ours"]["rate"], 2),
         fmt_range(sa["peer"]["rate"], 2) if has_peer else "",
         sa["ours"]["rate"]["median"] / sa["peer"]["rate"]["median"] if has_peer else None)
    what = "peak CUDA alloc" if device.type == "cuda" else "peak RSS (+ over start)"
    line(f"train {what}", fmt_mem(tr["ours"], device), fmt_mem(tr["peer"], device) if has_peer else "")
    if "peer_fp32" in tr:
        line(f"train {what}, peer fp32", "", fmt_mem(tr["peer_fp32"], device))
    line(f"sample {what}", fmt_mem(sa["ours"], device), fmt_mem(sa["peer"], device) if has_peer else "")
    fl = row["flops_per_image"]
    line("train GFLOP/image (fwd+bwd)", f"{fl['ours']['train'] / 1e9:,.2f}",
         f"{fl['peer']['train'] / 1e9:,.2f}" if has_peer else "")
    line("train achieved TFLOP/s", f"{fl['ours']['train_tflops_achieved']:,.3f}",
         f"{fl['peer']['train_tflops_achieved']:,.3f}" if has_peer else "")
    if peak_tflops:
        line(f"train MFU (peak {peak_tflops:g} TFLOP/s)", f"{100 * fl['ours']['train_mfu']:.1f}%",
             f"{100 * fl['peer']['train_mfu']:.1f}%" if has_peer else "")
    line("sample achieved TFLOP/s (fp32)", f"{fl['ours']['sample_tflops_achieved']:,.3f}",
         f"{fl['peer']['sample_tflops_achieved']:,.3f}" if has_peer else "")
    b = row["bound"]
    if b["full_T"]:
        how = f"bpd, all T={b['T']} steps, {b['images']} images, net batch {b['network_batch']}"
    else:
        how = (f"bpd cut to {b['timesteps_timed']} of T={b['T']} steps, {b['images']} images, "
               f"net batch {b['network_batch']}")
    print(f"  bound (ours): {b['img_t_per_s']:,.1f} image-timesteps/s [{how}; median of "
          f"{b['seconds']['n']}] -> full T={b['T']} bound "
          f"{'measured' if b['full_T'] else 'extrapolated'}: {b['full_bound_s_per_image']:,.2f} s per image")
    print(f"  timing: {s['rounds']} alternating rounds; train: {s['warmup']} warmup + {s['steps']} timed steps "
          f"per round; sample: {s['sample_warmup']} warmup + {s['sample_steps']} timed p_sample calls per round")
    if device.type == "cuda":
        print(f"  TF32: train {row['train_tf32']}; sample {row['sample_tf32']}; bound {row['bound_tf32']}")


def resolve_peak(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name or "H200" in name:
            return H100_H200_BF16_TFLOPS
        raise SystemExit(f"--peak-tflops is required on {name!r} (its dense peak in the training precision)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, tiny batches and step counts")
    parser.add_argument("--batch-size", type=int, default=0, help="training and sampling batch (CPU 16, CUDA 128)")
    parser.add_argument("--steps", type=int, default=0, help="timed training steps per round (CPU 2, CUDA 20)")
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (CPU 3, CUDA 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--models", default="mnist,cifar10", help="comma-separated: mnist, cifar10")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="device peak for MFU (default 989 on H100/H200; required on other GPUs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key for our side, e.g. train.channels_last=true")
    parser.add_argument("--no-peer", action="store_true", help="skip denoising-diffusion-pytorch")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of one step")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise SystemExit(f"--models {args.models!r}: accepted: {', '.join(MODELS)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    peak = resolve_peak(args, device)
    overrides = parse_sets(args.set)
    s = settings_for(device, args.quick, args.batch_size, args.steps, args.rounds)
    peer_missing = "--no-peer given" if args.no_peer else peer_available()
    seed = 0

    env = {**environment(device, args.quick), "overrides": overrides, "peak_tflops": peak, "peer": None}
    if peer_missing is None:
        from importlib.metadata import version

        env["peer"] = {"denoising-diffusion-pytorch": version("denoising-diffusion-pytorch"),
                       "ema-pytorch": version("ema-pytorch")}
    load = env["load_avg_start"]
    print(f"ddpm training benchmark: device={env['device']} ({env['device_name']}), torch {env['torch']}, "
          f"threads={env['threads']} of {env['cpu_count']} CPUs" + (f", load average {load:.2f}" if load is not None
                                                                     else "") + (", quick" if args.quick else ""))
    if machine_is_busy(device, load):
        print(f"WARNING: the machine is busy before the benchmark starts (load average {load:.2f} on "
              f"{os.cpu_count()} CPUs): absolute CPU figures will be slow and noisy; the ours/peer ratios, "
              "measured alternately, are the figures to read"
              + (f". With {env['threads']} torch threads competing for busy cores, --threads 1 gives "
                 "steadier figures." if env["threads"] > 1 else "."))
    print("ours: training timed inside ddpm.training.loop.train() itself (called once per round on random grey "
          "levels; timed between its log callbacks after the warmup steps, setup excluded)")
    if peer_missing is None:
        print(f"peer: denoising-diffusion-pytorch {env['peer']['denoising-diffusion-pytorch']} "
              f"(ema-pytorch {env['peer']['ema-pytorch']}): its Trainer's step replicated (GaussianDiffusion "
              f"forward + loss.item(), backward, clip_grad_norm_(1.0), Adam{PEER_ADAM_BETAS}, "
              f"EMA(beta={PEER_EMA['beta']}, update_every={PEER_EMA['update_every']})); sampling via its p_sample")
    else:
        print(f"peer: not measured ({peer_missing}); pip install -e '.[bench]' for the comparison")
    if overrides:
        print(f"our params overridden with {overrides}")
    if device.type == "cpu":
        print("memory: peak RSS of the whole process during each round (VmHWM, reset per round), and its "
              "growth over the round's starting RSS in parentheses")
    else:
        print("memory: torch.cuda.max_memory_allocated during each round, above the round's start")

    t_start = time.perf_counter()
    rows = [run_model(name, overrides, s, device, peer_missing is None, peak, seed) for name in models]
    total = time.perf_counter() - t_start
    env["load_avg_end"] = load = load_average()
    env["run_peak_rss_mib"] = run_peak_rss_mib()

    print("\nSummary (ours/peer at matched parameter count, medians of alternating rounds):")
    for r in rows:
        if "peer" not in r["train"]:
            print(f"  {r['model']}: train {r['train']['ours']['rate']['median']:,.2f} img/s, "
                  f"sample {r['sample']['ours']['rate']['median']:,.2f} NFE/s (no peer)")
            continue
        ours_rate = r["train"]["ours"]["rate"]["median"]
        tr = ours_rate / r["train"]["peer"]["rate"]["median"]
        sa = r["sample"]["ours"]["rate"]["median"] / r["sample"]["peer"]["rate"]["median"]
        r["ratio"] = {"train": tr, "sample": sa}
        both = f"both {r['precision']}"
        if "peer_fp32" in r["train"]:
            r["ratio"]["train_vs_peer_fp32"] = d = ours_rate / r["train"]["peer_fp32"]["rate"]["median"]
            both += f"; {d:.2f}x ({'meets' if d >= 1.3 else 'BELOW'}) against the peer at its default fp32"
        print(f"  {r['model']:<8} params {r['ours']['parameters']:,} vs {r['peer']['parameters']:,}: "
              f"train {tr:.2f}x ({'meets' if tr >= 1.3 else 'BELOW'} the >= 1.3x target, {both}), "
              f"sample {sa:.2f}x ({'at least as fast' if sa >= 1.0 else 'SLOWER'}, both fp32)")
    print(f"process-wide peak RSS over the whole run (VmHWM / ru_maxrss): {env['run_peak_rss_mib']:,.0f} MiB")
    print(f"benchmark wall time: {total:.1f} s" + (f" (load average now {load:.2f})" if load is not None else ""))

    if args.profile:
        amp_dtype = resolve_precision(our_params(models[0], overrides).train.precision, device)
        for name in models:
            peer = None
            row = next(r for r in rows if r["model"] == name)
            if "peer" in row:
                p = row["peer"]
                peer = {"dim": p["dim"], "mults": tuple(p["mults"]), "dropout": p["dropout"],
                        "timesteps": p["timesteps"]}
            profile_steps(name, overrides, peer, s, device, amp_dtype)

    if args.json:
        atomic_write_json(args.json, {"env": env, "models": rows, "wall_s": total})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
