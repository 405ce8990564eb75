"""Does training in bf16 change the bound? Train the same model in fp32 and in bf16 (same seed,
data and batches), and compare their bits/dim image by image on the same test images with the
same bound noise; for scale, also the change from training with another seed.

    python benchmarks/precision_parity.py                  # digits: 3 x 3000 steps + 3 bounds, ~18 min on 2 idle cores
    python benchmarks/precision_parity.py --steps 500      # a quicker, noisier look
    python benchmarks/precision_parity.py --device cuda --dataset mnist --raw data/raw

Paired differences (mean +- standard error over the test images) are what to read: the
unpaired standard errors are dominated by how hard the images are, which both runs share.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ddpm.config import Params
from ddpm.data import prepare_dataset
from ddpm.evaluation.bound import bound_per_example, evaluation_inputs
from ddpm.pipeline.build import build_diffusion, data_resolved_params
from ddpm.pipeline.runtime import resolve_device, set_tf32
from ddpm.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="digits (default) or a dataset already in --raw")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the dataset's default)")
    parser.add_argument("--test-images", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    prepared = prepare_dataset(args.dataset, Path(args.raw), seed=0, test_size=300, download=False)
    x_all = evaluation_inputs(prepared.test, prepared.meta, args.test_images)
    runs = {"fp32 seed 0": ("fp32", 0), "bf16 seed 0": ("bf16", 0), "bf16 seed 1": ("bf16", 1)}
    bpd = {}
    for name, (precision, seed) in runs.items():
        raw = {"dataset": args.dataset, "seed": seed, "train": {"precision": precision}}
        if args.steps:
            raw["train"]["steps"] = args.steps
        # auto settings resolved from the training data as the train stage does (the batch).
        params = data_resolved_params(Params.from_dict(raw), evaluation_inputs(prepared.train, prepared.meta))
        start = time.perf_counter()
        result = train(params, prepared.train, prepared.meta, device, progress=False)
        train_s = time.perf_counter() - start
        set_tf32(False)  # the bound in full float32, as the evaluate stage computes it
        parts = bound_per_example(build_diffusion(params), result.ema.eval(), x_all, prepared.meta,
                                  clip_denoised=True, seed=0, device=device)
        bpd[name] = parts["total"].double().numpy()
        se = bpd[name].std(ddof=1) / np.sqrt(len(bpd[name]))
        print(f"{name}: {params.train.steps} steps in {train_s:.0f} s; "
              f"{bpd[name].mean():.4f} +- {se:.4f} bits/dim on {len(bpd[name])} test images", flush=True)

    for a, b in (("bf16 seed 0", "fp32 seed 0"), ("bf16 seed 1", "bf16 seed 0")):
        d = bpd[a] - bpd[b]
        print(f"{a} - {b}: {d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f} bits/dim (paired)")


if __name__ == "__main__":
    main()
