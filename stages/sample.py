"""DVC stage `sample`: models/model.pt -> reports/samples/ (samples.npz with the samples,
the sampler's trajectory and each sample's number of network evaluations (NFE); sampling.json
with the sampler, its mean NFE and its resolved settings; grid.png, reverse_process.png). Under torchrun the
samples are spread over the ranks and gathered on rank 0; sample i comes from its own
seeded generator, so the result is the same however it is split."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ddpm.config import Params, load_params
from ddpm.errors import CheckpointError
from ddpm.io import atomic_save_npz, atomic_write_json
from ddpm.pipeline.build import TrainedModel, load_for_inference, score_sampler
from ddpm.pipeline.runtime import gather_to_main, shard
from ddpm.pipeline.stage import progress_bar, run_stage, stage_parser
from ddpm.pipeline.tracking import Tracker
from ddpm.plotting import SAMPLER_TITLES, reverse_process_figure, samples_figure, save_figure
from ddpm.sampling.runner import draw_samples
from ddpm.sampling.score_samplers import draw_score_samples


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
            samples, trajectory = _draw(params, trained, shape, indices, on_step)
        shares = gather_to_main((list(indices), samples, trajectory["x"], trajectory["nfe"]), dist)
        if dist.distributed:
            torch.distributed.destroy_process_group()
        if not dist.is_main:
            return
        order = np.argsort(np.concatenate([s[0] for s in shares]))
        samples = torch.cat([s[1] for s in shares])[order].numpy()
        frames = torch.cat([s[2] for s in shares], dim=1)[:, order].numpy()
        nfe = torch.cat([s[3] for s in shares])[order].numpy()
        out = Path(args.out)
        atomic_save_npz(out / "samples.npz", samples=samples, trajectory=frames, steps=trajectory["steps"],
                        labels=np.asarray(trajectory["labels"]), nfe=nfe)
        settings = {"sampler": sc.sampler, "nfe": float(nfe.mean()), "nfe_max": float(nfe.max()),
                    **trajectory["settings"]}
        atomic_write_json(out / "sampling.json", settings)
        save_figure(samples_figure(samples, trained.meta), out / "grid.png")
        save_figure(reverse_process_figure(frames, trajectory["steps"], trained.meta, labels=trajectory["labels"],
                                           title=SAMPLER_TITLES.get(sc.sampler)), out / "reverse_process.png")
        if tracker is not None:
            for name in ("grid.png", "reverse_process.png"):
                tracker.log_image(out / name, "samples")  # an artifact, and an image of the chart view
            tracker.log_artifact(out / "sampling.json", "samples")
            tracker.finish()
            tracker.check_recorded("reruns this stage and logs it")

    return run_stage("sample", body, parser, argv, hints=HINTS)


def _draw(params: Params, trained: TrainedModel, shape: tuple[int, ...], indices: list[int], on_step):
    """The samples of this rank's ``indices`` and the trajectory: ``steps`` (the paper's state
    indices; -1 where the sampler has none), ``labels``, ``x``, per-sample ``nfe`` and the
    sampler's resolved ``settings``."""
    sc, images = params.sample, trained.meta["kind"] == "image"
    if sc.sampler in ("ancestral", "ddim"):
        samples, trajectory = draw_samples(
            trained.diffusion, trained.network, shape, seed=params.seed, batch_size=sc.batch_size,
            sampler=sc.sampler, steps=sc.steps, eta=sc.eta,
            # Clipping to [-1, 1] is for images; continuous data (the Swiss roll) is not bounded there.
            clip_denoised=sc.clip_denoised and images, trajectory_frames=sc.trajectory_frames,
            device=trained.device, on_step=on_step, indices=indices)
        T = trained.diffusion.num_timesteps
        nfe = sc.steps if 0 < sc.steps < T else T  # one network call per reverse step
        return samples, {**trajectory, "labels": [f"t={s}" for s in trajectory["steps"]],
                         "nfe": torch.full((len(samples),), float(nfe), dtype=torch.float64), "settings": {}}
    model, settings = score_sampler(params, trained)
    samples, trajectory = draw_score_samples(model, sc.sampler, settings, shape, seed=params.seed,
                                             batch_size=sc.batch_size, trajectory_frames=sc.trajectory_frames,
                                             device=trained.device, on_step=on_step, indices=indices)
    if images:
        # The samples are images on [-1, 1]; the score samplers do not clip (score_sde clips on saving).
        samples = samples.clamp(-1, 1)
    # sampling.json records the settings that are not in the sample section: the ODE's and ALD's.
    recorded = {} if sc.sampler == "pc" else settings
    return samples, {**trajectory, "steps": [-1] * len(trajectory["labels"]), "settings": recorded}


HINTS = {CheckpointError: "`dvc repro train` writes models/model.pt; retrain if it is from another config"}


if __name__ == "__main__":
    sys.exit(main())
