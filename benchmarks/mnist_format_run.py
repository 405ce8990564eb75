"""A short MNIST-format training run with the real data path, for machines without internet.

Writes sklearn's digits, upscaled to 28x28 with 256 grey levels, as MNIST IDX files
(`<raw>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`), reads them back through
the project's torchvision loader (`ddpm.data.prepare_dataset("mnist", ...)`), trains the
default MNIST U-Net for `--steps` steps with the default MNIST settings (bf16 autocast on
CUDA), and reports the wall time of training and of the full T = 1000 bound (bits/dim,
clip_denoised on) over `--test-images` test images. With the real MNIST files in `--raw`,
pass `--real` to use them instead.

    python benchmarks/mnist_format_run.py --steps 2000 --test-images 300
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddpm.config import Params
from ddpm.data import prepare_dataset
from ddpm.evaluation.bound import bound_per_example, evaluation_inputs, summarize_bound
from ddpm.nn import count_parameters
from ddpm.pipeline.build import build_diffusion, data_resolved_params
from ddpm.pipeline.runtime import resolve_device, set_tf32
from ddpm.training.loop import train


def write_idx_from_digits(raw: Path, test_size: int = 300, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    # 8x8 -> 28x28: bilinear to 24x24 plus a 2-pixel border, as MNIST centres its digits.
    big = torch.nn.functional.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
    big = torch.nn.functional.pad(big, (2, 2, 2, 2))
    levels = (big.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    labels = digits.target.astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(levels))
    folder = raw / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", order[test_size:]), ("t10k", order[:test_size])):
        imgs = levels[idx]
        header = struct.pack(">IIII", 0x803, len(imgs), 28, 28)
        (folder / f"{split}-images-idx3-ubyte").write_bytes(header + imgs.tobytes())
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(idx)) + labels[idx].tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--raw", default=None, help="folder holding MNIST/raw (default: a temporary folder)")
    parser.add_argument("--real", action="store_true", help="use real MNIST files already in --raw")
    args = parser.parse_args()

    raw = Path(args.raw or tempfile.mkdtemp())
    if not args.real:
        write_idx_from_digits(raw)
    device = resolve_device(args.device)
    prepared = prepare_dataset("mnist", raw, seed=0, test_size=0, download=False)
    # auto settings resolved from the training data as the train stage does (the batch).
    params = data_resolved_params(Params.from_dict({"dataset": "mnist", "train": {"steps": args.steps,
                                                                                  "log_every": 200}}),
                                  evaluation_inputs(prepared.train, prepared.meta))
    print(f"data: {'real MNIST' if args.real else 'sklearn digits upscaled to 28x28, written as MNIST IDX'}; "
          f"{len(prepared.train)} train / {len(prepared.test)} test images via torchvision's MNIST reader")

    start = time.perf_counter()
    result = train(params, prepared.train, prepared.meta, device, progress=False,
                   on_log=lambda s, m: print(f"  step {s}: loss {m['loss']:.4f}, {m['images_per_s']:.0f} images/s"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    print(f"trained {count_parameters(result.model):,} parameters for {args.steps} steps "
          f"(batch {params.train.batch_size}) on {device} in {train_s:.1f} s")

    set_tf32(False)
    diffusion = build_diffusion(params)
    x_all = evaluation_inputs(prepared.test, prepared.meta, args.test_images)
    start = time.perf_counter()
    parts = bound_per_example(diffusion, result.ema.eval(), x_all, prepared.meta, batch_size=512,
                              clip_denoised=True, seed=0, device=device)
    bound_s = time.perf_counter() - start
    report = summarize_bound(parts, prepared.meta, clip_denoised=True)
    b = report["bpd"]
    print(f"bound over {report['num_images']} test images, T = {report['timesteps']}: "
          f"{b['total']:.3f} +- {b['stderr']:.3f} bits/dim (prior {b['prior']:.2e}, decoder {b['decoder']:.3f}, "
          f"KL terms {b['kl_terms']:.3f}) in {bound_s:.1f} s")


if __name__ == "__main__":
    main()
