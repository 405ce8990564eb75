"""The figures behind the speed choices of ``ddpm.training.loop``, ``ddpm.pipeline.runtime`` and
``ddpm.nn.dropout``, each timed both ways, alternately, on the CPU (medians of ``--rounds``):

1. **Fused Adam.** ``torch.optim.Adam(fused=True)`` against the per-parameter loop
   (``foreach=False``) and the foreach kernels, one ``step()`` over the CIFAR-10 U-Net's
   parameters with random gradients.
2. **Dropout mask.** ``ddpm.nn.dropout.Dropout`` against ``nn.Dropout`` (p = 0.1), forward
   and backward of a 16x128x32x32 activation (the CIFAR-10 U-Net's widest).
3. **Flushing subnormals.** ``ddpm.training.loop.train_step`` from the initial weights (the lr
   warmup, zero-initialised output layers: when gradients and Adam's moments are subnormal)
   inside ``ddpm.pipeline.runtime.flush_denormals`` and without it.
4. **bf16 for the MLP.** ``train_step`` of the default swissroll MLP under bf16 autocast
   against fp32 (why ``train.precision=auto`` keeps the MLP in fp32).
5. **bf16 attention on the CPU** (``ddpm.nn.unet.attention``, ``SMALL_ATTENTION_TOKENS``).
   Forward and backward of one head's attention in bf16 at the U-Nets' shapes (batch x
   tokens x channels: digits 128 x 16 x 64, MNIST 128 x 196 x 128, CIFAR-10 128 x 256 x 256,
   and 32 x 1024 x 128), PyTorch's fused kernel against the explicit form (two bf16 matrix
   products around an fp32 softmax); then the digits U-Net's whole ``train_step`` in bf16
   (batch 128, the default run's step) with the explicit form off (``SMALL_ATTENTION_TOKENS =
   0``: the fused kernel everywhere) and on.

    python benchmarks/bench_components.py                   # about 3 minutes on 2 idle cores
    python benchmarks/bench_components.py --quick           # smoke run: MNIST-size U-Net, 1 round
    python benchmarks/bench_components.py --only dropout,adam
    python benchmarks/bench_components.py --only attention   # about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
from _common import environment, fmt_range, median_range, timed
from torch import nn

from ddpm.config import Params
from ddpm.nn import unet
from ddpm.nn.dropout import Dropout
from ddpm.pipeline.build import build_network
from ddpm.pipeline.runtime import flush_denormals
from ddpm.training.loop import setup_training, train_step

CPU = torch.device("cpu")
IMAGE_META = {"cifar10": {"kind": "image", "shape": [3, 32, 32], "num_levels": 256},
              "mnist": {"kind": "image", "shape": [1, 28, 28], "num_levels": 256}}


def alternate(ways: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each way, timed in turn (one warm-up call each)."""
    for fn in ways.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            times[name].append(timed(lambda fn=fn: [fn() for _ in range(reps)], CPU) / reps * 1e3)
    return {name: median_range(ts) for name, ts in times.items()}


def bench_adam(dataset: str, rounds: int) -> dict[str, dict[str, float]]:
    net = build_network(Params.from_dict({"dataset": dataset}), IMAGE_META[dataset])
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
    ways = {}
    for name, kwargs in optimizers.items():
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, **kwargs)
        ways[name] = opt.step
    return alternate(ways, rounds, reps=3)


def bench_dropout(rounds: int, quick: bool) -> dict[str, dict[str, float]]:
    shape = (4 if quick else 16, 128, 32, 32)
    x = torch.randn(shape, requires_grad=True)

    def way(layer: nn.Module) -> Callable[[], None]:
        layer.train()
        return lambda: layer(x).sum().backward()

    return alternate({"ddpm Dropout": way(Dropout(0.1)), "nn.Dropout": way(nn.Dropout(0.1))}, rounds, reps=5)


def bench_denormals(dataset: str, rounds: int, steps: int) -> dict[str, dict[str, float]]:
    params = Params.from_dict({"dataset": dataset, "train": {"batch_size": 8}})
    meta = IMAGE_META[dataset]
    shape = tuple(meta["shape"])

    def fresh_run(flush: bool) -> Callable[[], None]:
        def run() -> None:  # the first steps of a run, from the initial weights
            trainer = setup_training(params, meta, CPU)
            trainer.state.model.train()
            g = torch.Generator().manual_seed(0)
            with flush_denormals(CPU) if flush else contextlib.nullcontext():
                for _ in range(steps):
                    x0 = torch.rand(8, *shape, generator=g) * 2 - 1
                    t = torch.randint(0, 1000, (8,), generator=g)
                    train_step(trainer, x0, t, torch.randn(8, *shape, generator=g))
        return run

    return alternate({"flushed": fresh_run(True), "not flushed": fresh_run(False)}, rounds, reps=1)


def bench_mlp_precision(rounds: int, steps: int) -> dict[str, dict[str, float]]:
    meta = {"kind": "vector", "shape": [2], "num_levels": None}
    ways = {}
    for precision in ("fp32", "bf16"):
        params = Params.from_dict({"dataset": "swissroll", "train": {"precision": precision}})
        trainer = setup_training(params, meta, CPU)
        trainer.state.model.train()
        batch = params.train.batch_size
        g = torch.Generator().manual_seed(0)
        x0, noise = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g)
        t = torch.randint(0, params.diffusion.timesteps, (batch,), generator=g)
        ways[precision] = lambda trainer=trainer, x0=x0, t=t, noise=noise: [
            train_step(trainer, x0, t, noise) for _ in range(steps)]
    return alternate(ways, rounds, reps=1)


ATTENTION_SHAPES = {"digits": (128, 16, 64), "mnist": (128, 196, 128), "cifar10": (128, 256, 256),
                    "1024 tokens": (32, 1024, 128)}


@contextlib.contextmanager
def attention_limit(limit: int) -> Iterator[None]:
    """``ddpm.nn.unet.SMALL_ATTENTION_TOKENS`` set to ``limit`` (0: the fused kernel everywhere)
    inside the block, the library's value restored after it."""
    saved = unet.SMALL_ATTENTION_TOKENS
    unet.SMALL_ATTENTION_TOKENS = limit
    try:
        yield
    finally:
        unet.SMALL_ATTENTION_TOKENS = saved


def bench_attention_kernels(rounds: int, quick: bool) -> dict[str, dict[str, float]]:
    """Forward + backward of bf16 attention, fused against explicit, at each shape."""
    ways = {}
    for name, (batch, tokens, channels) in ATTENTION_SHAPES.items():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch // 8 if quick else batch, 1, tokens, channels, generator=g)
                   .bfloat16().requires_grad_() for _ in range(3))
        for form, limit in (("fused", 0), ("explicit", tokens)):
            def run(q=q, k=k, v=v, limit=limit) -> None:
                with attention_limit(limit):
                    unet.attention(q, k, v).sum().backward()
            ways[f"{name} {form}"] = run
    return alternate(ways, rounds, reps=3)


def bench_attention_step(rounds: int, steps: int) -> dict[str, dict[str, float]]:
    """``steps`` bf16 training steps of the digits U-Net (batch 128) with the fused kernel
    everywhere and with the library's limit (the explicit form at its 16 tokens)."""
    params = Params.from_dict({"dataset": "digits", "train": {"precision": "bf16", "batch_size": 128}})
    meta = {"kind": "image", "shape": [1, 8, 8], "num_levels": 17}
    trainer = setup_training(params, meta, CPU)
    trainer.state.model.train()
    g = torch.Generator().manual_seed(0)
    batch = params.train.batch_size
    x0 = torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (batch,), generator=g)
    noise = torch.randn(batch, 1, 8, 8, generator=g)

    def way(limit: int) -> Callable[[], None]:
        def run() -> None:
            with attention_limit(limit), flush_denormals(CPU):
                for _ in range(steps):
                    train_step(trainer, x0, t, noise)
        return run

    return alternate({"fused": way(0), "explicit": way(unet.SMALL_ATTENTION_TOKENS)}, rounds, reps=1)


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Each way against the first, or, for ways named "<shape> <way>", against its shape's fused kernel."""
    pairs = []
    for name in names[1:]:
        shape, _, way = name.rpartition(" ")
        if not shape:
            pairs.append((name, names[0]))
        elif way != "fused" and f"{shape} fused" in names:
            pairs.append((name, f"{shape} fused"))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: MNIST-size U-Net, small batches, 1 round")
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 5, quick 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", default="adam,dropout,denormals,mlp,attention,attention_step",
                        help="comma-separated subset")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 5)
    dataset = "mnist" if args.quick else "cifar10"
    env = environment(CPU, args.quick)
    print(f"component benchmark on the CPU ({env['device_name']}), torch {env['torch']}, {env['threads']} threads, "
          f"load average {env['load_avg_start']:.2f}; ms per call, median [min-max] of {rounds} alternating rounds")
    benches = {
        "adam": (f"Adam step, {dataset} U-Net", lambda: bench_adam(dataset, rounds)),
        "dropout": ("dropout forward+backward", lambda: bench_dropout(rounds, args.quick)),
        "denormals": (f"first 3 training steps, {dataset} U-Net, batch 8",
                      lambda: bench_denormals(dataset, rounds, steps=3)),
        "mlp": ("20 training steps of the swissroll MLP", lambda: bench_mlp_precision(rounds, steps=20)),
        "attention": ("bf16 attention forward+backward (batch x tokens x channels: "
                      + ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in ATTENTION_SHAPES.items())
                      + ")", lambda: bench_attention_kernels(rounds, args.quick)),
        "attention_step": ("10 bf16 training steps of the digits U-Net, batch 128",
                           lambda: bench_attention_step(rounds, steps=2 if args.quick else 10)),
    }
    for key in args.only.split(","):
        title, run = benches[key.strip()]
        stats = run()
        ratios = ", ".join(f"{name} / {base}: {stats[name]['median'] / stats[base]['median']:.2f}x"
                           for name, base in ratio_pairs(list(stats)))
        print(f"  {title}: " + "; ".join(f"{name} {fmt_range(s, 2)}" for name, s in stats.items()) + f" ({ratios})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
