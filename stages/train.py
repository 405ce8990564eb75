"""DVC stage `train`: prepared data + params -> models/model.pt (EMA and raw weights, the
resolved config, the data meta, the MLflow run id), models/run.json,
reports/train/loss.csv and reports/train/bound.csv (the bound's learning curve, estimated on
test examples every train.bound_every steps). Runs unchanged under `python -m` and `torchrun -m`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.errors import CheckpointError, DataError, DatasetNotFoundError
from ddpm.evaluation.bound import bound_curve_point, evaluation_inputs
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.nn import count_parameters
from ddpm.pipeline.build import build_diffusion, build_network, build_objective, data_resolved_params
from ddpm.pipeline.checkpoint import save_checkpoint
from ddpm.pipeline.runtime import dist_info, init_distributed, launch_torchrun, print0, resolve_device, set_threads
from ddpm.pipeline.stage import run_stage, stage_parser
from ddpm.pipeline.tracking import KEY_TAG, Tracker, experiment_key, is_server, redact
from ddpm.training.loop import Probe, check_batch_size, resolved_params, train
from ddpm.training.state import TrainingState

HINTS = {
    CheckpointError: "the resumable training state is --state (checkpoints/train_state.pt by default): continue it "
                     "where it was saved, or delete it to train anew, then `dvc repro train`",
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared",
    DataError: "`dvc repro prepare` rewrites data/prepared from the raw files",
}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--out", default="models")
    parser.add_argument("--state", default="checkpoints/train_state.pt", help="resumable training state")
    parser.add_argument("--reports", default="reports/train")
    return run_stage("train", lambda args: body(args, argv), parser, argv, hints=HINTS)


def body(args, argv: list[str] | None) -> None:
    current = load_params(args.params)
    dist = dist_info()
    prepared = load_prepared(args.data)
    # Everything that can be wrong with the config fails here, before the tracking
    # store is touched and before any training step. Settings derived from the training
    # data (NCSNv2's rules: sigma_max, the number of noise levels) are fixed here too.
    params = data_resolved_params(current, evaluation_inputs(prepared.train, prepared.meta))
    build_objective(params)
    check_batch_size(params, len(prepared.train), dist)
    num_params = count_parameters(build_network(params, prepared.meta))
    if params.train.nproc > 1 and not dist.distributed:
        # Hand over to PyTorch's own launcher, which starts train.nproc copies of this stage.
        launch_torchrun(params.train.nproc, argv, module="stages.train")
        return
    device = init_distributed(resolve_device(params.train.device), dist)
    set_threads(params.train.num_threads)
    # What was actually used (auto resolved): stored with the model and logged.
    used = resolved_params(params, prepared.meta, device, dist)
    tracker: Tracker | None = None

    def on_start(state: TrainingState) -> None:
        # After a saved state was restored (or not): the run that state was logged to goes on.
        nonlocal tracker
        tracker = open_run(params, current, used, prepared, args.data, num_params, device, dist, state)
        state.run_id = tracker.run_id

    try:
        result = train(params, prepared.train, prepared.meta, device, dist, state_path=args.state,
                       on_log=lambda step, metrics: tracker.log_training_metrics([(step, metrics)]),
                       probe=bound_probe(params, prepared, device) if dist.is_main else None,
                       on_start=on_start if dist.is_main else None)
    except BaseException as err:
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", error=err)
        raise
    finally:
        if dist.distributed:
            torch.distributed.destroy_process_group()
    if dist.is_main:
        write_outputs(args, result, used, prepared.meta, tracker)


def write_outputs(args, result, used, meta: dict, tracker: Tracker) -> None:
    """The model, run.json and the learning curves, the model logged to the run."""
    tracker.mark_training_curves()
    model_path = Path(args.out) / "model.pt"
    save_checkpoint(model_path, {
        "params": used.to_dict(), "meta": meta, "step": result.step,
        "model": result.model.state_dict(), "ema": result.ema.state_dict(),
        "mlflow_run_id": tracker.run_id,
    })
    # The resolved config beside the run id: the plot stage draws the family's noise schedule from it.
    atomic_write_json(Path(args.out) / "run.json", {"mlflow_run_id": tracker.run_id, "params": used.to_dict()})
    header = ["step", "loss", "lr", "grad_norm", "images_per_s"]
    atomic_write_csv(Path(args.reports) / "loss.csv", header, [[row[k] for k in header] for row in result.history])
    # Columns named for both units (bits/dim for images, nats/dim for vectors), so one
    # dvc.yaml plot serves every dataset; MLflow has them as bpd_/nll_estimate.
    unit = "bpd" if meta["kind"] == "image" else "nll"
    atomic_write_csv(Path(args.reports) / "bound.csv", ["step", "bound_estimate", "stderr"],
                     [[r["step"], r[f"{unit}_estimate"], r[f"{unit}_estimate_stderr"]] for r in result.curve])
    tracker.log_artifact(model_path, "model")
    tracker.finish()
    # The training state at the last step is saved: a rerun restores it and trains no step.
    tracker.check_recorded(f"reruns this stage, which restores the training state saved at step {result.step} "
                           f"({args.state}) without training again and logs the rest of the run")


def open_run(params, current, used, prepared, data_dir: str, num_params: int, device: torch.device, dist,
             state: TrainingState) -> Tracker:
    """The experiment's MLflow run, with the training history a resumed ``state`` restored: the
    run that state was logged to, continued, or a new one (``Tracker.open_training``)."""
    # The key lets sample, evaluate and plot of this experiment find this run.
    tracker = Tracker.open_training(
        params.mlflow.experiment, used.flatten(), params.mlflow.tracking_uri,
        tags={"num_parameters": str(num_params), "device": str(device), "world_size": str(dist.world_size),
              "precision": used.train.precision, KEY_TAG: experiment_key(current.flatten())},
        resume_run_id=state.run_id if state.step > 0 else None)
    tracker.catch_up(state.history, state.curve)
    print0(f"training {num_params:,} parameters on {device} x{dist.world_size} ({used.train.precision}); "
           f"mlflow run {tracker.run_id} in {redact(tracker.uri)}; compare runs at {tracker.view_url()}"
           + ("" if is_server(tracker.uri) else " (after `mlflow ui --backend-store-uri <that store>`)"))
    splits = {"train": (prepared.train, prepared.train_labels), "test": (prepared.test, prepared.test_labels)}
    tracker.log_dataset(prepared.meta["dataset"], str(Path(data_dir).resolve()), splits)
    return tracker


def bound_probe(params, prepared, device: torch.device) -> Probe | None:
    """The learning curve's probe: the bound of the first ``train.bound_images`` test examples,
    estimated from ``train.bound_strata`` timesteps each, with pred_x0 clipped as the evaluate
    stage does by default. None when switched off, without two test examples, or for a family
    other than ddpm."""
    if not params.family_facts.has_bound or params.train.bound_every == 0 or len(prepared.test) < 2:
        return None  # the score families have no variational bound
    x = evaluation_inputs(prepared.test, prepared.meta, params.train.bound_images)
    diffusion = build_diffusion(params)
    return lambda network: bound_curve_point(diffusion, network, x, prepared.meta, params.train.bound_strata,
                                             seed=params.seed, device=device)


if __name__ == "__main__":
    sys.exit(main())
