"""What seeding every training step from the step costs: the loop draws each step's timesteps,
noise and flips from a generator seeded for that step (``ddpm.seeding``, stream
``train_noise``) and reseeds the global RNG for dropout (stream ``dropout``), so that a resume
needs no generator states. The alternative is one generator kept for the whole run.

For the default swissroll MLP and the default digits U-Net, on ``--device``, this times
``--steps`` (MLP) or ``--unet-steps`` training steps (``ddpm.training.loop.train_step`` on the
loop's batches) both ways, alternately (per-step seeding, one generator, per-step seeding, ...), and reports the median
milliseconds per step of each and the seeding alone (creating and seeding the step's
generator and reseeding the global RNG).

    python benchmarks/bench_step_seeding.py                 # MLP 200, U-Net 20 steps x 3 rounds each way
    python benchmarks/bench_step_seeding.py --steps 20 --unet-steps 2 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

import numpy as np
import torch
from _common import environment, fmt_range, median_range, timed

from ddpm import seeding
from ddpm.config import Params, default_setting
from ddpm.data import to_model_space
from ddpm.pipeline.runtime import flush_denormals, resolve_device
from ddpm.training.loop import Trainer, batch_draws, seed_dropout, setup_training, train_step

CASES = {  # name: (params, data meta)
    "swissroll MLP": ({"dataset": "swissroll"}, {"kind": "vector", "shape": [2], "num_levels": None}),
    "digits U-Net": ({"dataset": "digits"}, {"kind": "image", "shape": [1, 8, 8], "num_levels": 17}),
}


def step_functions(params: Params, trainer: Trainer, x0: torch.Tensor, device: torch.device
                   ) -> dict[str, Callable[[int], None]]:
    """One training step each way; ``step`` is the loop's step index."""
    shape, T = tuple(x0.shape[1:]), params.diffusion.timesteps
    batch = params.train.batch_size
    kept = torch.Generator(device=device).manual_seed(0)

    def per_step(step: int) -> None:
        t, noise, _ = batch_draws(params, step, shape, device, trainer.objective)
        seed_dropout(params.seed, step, 0, device)
        train_step(trainer, x0, t, noise)

    def one_generator(step: int) -> None:
        t = torch.randint(0, T, (batch,), device=device, generator=kept)
        noise = torch.randn((batch, *shape), device=device, generator=kept)
        train_step(trainer, x0, t, noise)

    def seeding_only(step: int) -> None:
        seeding.generator(params.seed, "train_noise", item=step, device=device)
        seed_dropout(params.seed, step, 0, device)

    return {"per-step seeding": per_step, "one generator": one_generator, "seeding alone": seeding_only}


def run_case(raw: dict, meta: dict, device: torch.device, steps: int, rounds: int) -> dict[str, dict]:
    params = Params.from_dict(raw)
    # The batch the train stage takes on a training split at least this large: the dataset's default.
    batch = default_setting(params.recipe, params.dataset, "train.batch_size")
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=batch))
    trainer = setup_training(params, meta, device)
    trainer.state.model.train()
    g = np.random.default_rng(0)
    if meta["kind"] == "image":
        x0 = torch.as_tensor(to_model_space(g.integers(0, 17, size=(batch, *meta["shape"])), 17))
    else:
        x0 = torch.as_tensor(g.normal(size=(batch, *meta["shape"])), dtype=torch.float32)
    x0 = x0.float().to(device)
    fns = step_functions(params, trainer, x0, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with flush_denormals(device):
        for fn in fns.values():  # warm-up
            for s in range(3):
                fn(s)
        for r in range(rounds):
            for name, fn in fns.items():
                start = r * steps
                times[name].append(timed(lambda fn=fn, start=start: [fn(s) for s in range(start, start + steps)],
                                         device) / steps * 1e3)
    return {name: median_range(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=200, help="timed MLP steps per round and way")
    parser.add_argument("--unet-steps", type=int, default=20, help="timed U-Net steps per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    env = environment(device, quick=False)
    print(f"per-step seeding vs one generator: {env['device']} ({env['device_name']}), torch {env['torch']}, "
          f"{env['threads']} threads, load average {env['load_avg_start']:.2f}; ms per step, median "
          f"[min-max] of {args.rounds} rounds of {args.steps} (MLP) or {args.unet_steps} (U-Net) steps")
    for case, (raw, meta) in CASES.items():
        steps = args.unet_steps if meta["kind"] == "image" else args.steps
        stats = run_case(raw, meta, device, steps, args.rounds)
        overhead = stats["per-step seeding"]["median"] / stats["one generator"]["median"] - 1
        print(f"  {case:<14} " + "; ".join(f"{name} {fmt_range(s)}" for name, s in stats.items())
              + f"; difference {100 * overhead:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
