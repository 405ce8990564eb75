"""How much one model's sample-quality metrics move from one set of samples to the next.

The quality stage scores one set of ``sample.num_samples`` samples (256 on digits), and its
floor is the spread between real draws; a model's own spread between sample sets is what
decides whether two models differ. This scores ``--sets`` disjoint sets of that size from a
workspace that ran ``dvc repro``: the sample stage's own samples, then samples n..(sets x n - 1)
of the same per-sample seed stream (the sample stage's sampler settings), each against the
quality stage's reference set in the classifier's features, and prints the Frechet distance,
precision, recall, density and coverage per set, their mean and the mean's standard error.

    python benchmarks/sample_quality_sets.py                    # this workspace, 4 sets
    python benchmarks/sample_quality_sets.py --root /tmp/clone --sets 4 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from _common import environment

from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.pipeline.build import load_trained
from ddpm.quality.run import build_suites
from ddpm.quality.suites import on_data_grid, real_reference, score_samples, to_model_inputs
from ddpm.sampling.runner import draw_samples

METRICS = ("fd_classifier", "precision_classifier", "recall_classifier", "density_classifier", "coverage_classifier")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="a workspace after dvc repro (digits, family ddpm)")
    parser.add_argument("--sets", type=int, default=4, help="sets of sample.num_samples samples (1: the stage's own)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root, cpu = Path(args.root), torch.device("cpu")
    params = load_params(root / "params.yaml")
    sc = params.sample
    if sc.sampler not in ("auto", "ancestral", "ddim"):
        parser.error(f"sample.sampler={sc.sampler!r}: this script draws the discrete diffusion's ancestral or ddim")
    prepared = load_prepared(root / "data" / "prepared")
    trained = load_trained(root / "models" / "model.pt", params, cpu, use_ema=sc.use_ema)
    families, _ = build_suites(["classifier"], params, prepared.meta, str(root / "models" / "classifier.pt"), cpu)
    n = sc.num_samples
    reference = to_model_inputs(real_reference(prepared.train, n, params.seed)[0], prepared.meta)
    env = environment(cpu, quick=False)
    print(f"{root.resolve()}: {args.sets} sets of {n} samples, {env['device_name']}, {env['threads']} threads")

    sets = [torch.as_tensor(np.load(root / "reports" / "samples" / "samples.npz")["samples"])]
    if args.sets > 1:
        more, _ = draw_samples(trained.diffusion, trained.network, (args.sets * n, *prepared.meta["shape"]),
                               seed=params.seed, batch_size=sc.batch_size,
                               sampler="ancestral" if sc.sampler == "auto" else sc.sampler, steps=sc.steps,
                               eta=sc.eta, clip_denoised=sc.clip_denoised, indices=list(range(n, args.sets * n)))
        sets += list(more.split(n))
    rows = [score_samples(families, on_data_grid(s, prepared.meta), reference) for s in sets]
    for key in METRICS:
        values = np.array([row[key] for row in rows])
        spread = f" +- {values.std(ddof=1) / np.sqrt(len(values)):.4f}" if len(values) > 1 else ""
        print(f"  {key}: sets {np.round(values, 4).tolist()}; mean {values.mean():.4f}{spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
