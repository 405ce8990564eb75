"""DVC stage `sample`: models/model.pt -> reports/samples/ (samples.npz with the samples
and the reverse-process trajectory, grid.png, reverse_process.png). Under torchrun the
samples are spread over the ranks and gathered on rank 0; sample i comes from its own
seeded generator, so the result is the same however it is split."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ddpm.cli import progress_bar, run_stage, stage_parser
from ddpm.config import load_params
from ddpm.errors import CheckpointError
from ddpm.factory import load_for_inference
from ddpm.io import atomic_save_npz
from ddpm.plotting import plot_reverse_process, plot_samples
from ddpm.runtime import gather_to_main, shard
from ddpm.samplers import draw_samples
from ddpm.tracking import Tracker


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--out", default="reports/samples")

    def body(args) -> None:
        params = load_params(args.params)
        sc = params.sample
        dist, trained = load_for_inference(args.model, params, sc.use_ema)
        # Found or made before the work, so an unusable store is reported before sampling.
        tracker = Tracker.for_experiment(trained.mlflow_run_id, params.mlflow.experiment, params.flatten(),
                                         params.mlflow.tracking_uri) if dist.is_main else None
        shape = (sc.num_samples, *trained.meta["shape"])
        indices = shard(sc.num_samples, dist)
        with progress_bar("sampling", "step", enabled=dist.is_main) as on_step:
            samples, trajectory = draw_samples(
                trained.diffusion, trained.network, shape, seed=params.seed, batch_size=sc.batch_size,
                sampler=sc.sampler, steps=sc.steps, eta=sc.eta,
                # Clipping to [-1, 1] is for images; continuous data (the Swiss roll) is not bounded there.
                clip_denoised=sc.clip_denoised and trained.meta["kind"] == "image",
                trajectory_frames=sc.trajectory_frames, device=trained.device, on_step=on_step, indices=indices)
        shares = gather_to_main((list(indices), samples, trajectory["x"]), dist)
        if dist.distributed:
            torch.distributed.destroy_process_group()
        if not dist.is_main:
            return
        order = np.argsort(np.concatenate([s[0] for s in shares]))
        samples = torch.cat([s[1] for s in shares])[order].numpy()
        frames = torch.cat([s[2] for s in shares], dim=1)[:, order].numpy()
        steps = np.asarray(trajectory["steps"])
        out = Path(args.out)
        atomic_save_npz(out / "samples.npz", samples=samples, trajectory=frames, steps=steps)
        plot_samples(samples, trained.meta, out / "grid.png")
        plot_reverse_process(frames, steps, trained.meta, out / "reverse_process.png")
        if tracker is not None:
            for name in ("grid.png", "reverse_process.png"):
                tracker.log_image(out / name, "samples")  # an artifact, and an image of the chart view
            tracker.finish()

    return run_stage("sample", body, parser, argv, hints=HINTS)


HINTS = {CheckpointError: "`dvc repro train` writes models/model.pt; retrain if it is from another config"}


if __name__ == "__main__":
    sys.exit(main())
