"""DVC stage `evaluate`: the full variational bound (all T terms) of the test split under
the trained model -> reports/eval/bound.json (bits/dim for images, nats/dim for vectors:
total, prior, decoder, standard error, number of examples; the report stage puts it into
reports/metrics.json) and reports/eval/terms.csv.
Under torchrun the test images are spread over the ranks and gathered on rank 0."""

from __future__ import annotations

import sys

import torch

from ddpm.cli import progress_bar, run_stage, stage_parser
from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.errors import CheckpointError, DataError, DatasetNotFoundError, EvaluationError
from ddpm.evaluation import bound_per_example, evaluation_inputs, merge_parts, summarize_bound
from ddpm.factory import load_for_inference
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.runtime import gather_to_main, set_tf32, shard
from ddpm.tracking import Tracker, report_metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--metrics", default="reports/eval/bound.json")
    parser.add_argument("--terms", default="reports/eval/terms.csv")

    def body(args) -> None:
        params = load_params(args.params)
        ec = params.evaluate
        set_tf32(False)  # the reported number is computed in full float32 (and float64 math)
        dist, trained = load_for_inference(args.model, params, ec.use_ema)
        # Found or made before the work, so an unusable store is reported before the bound.
        tracker = Tracker.for_experiment(trained.mlflow_run_id, params.mlflow.experiment, params.flatten(),
                                         params.mlflow.tracking_uri) if dist.is_main else None
        x_all = evaluation_inputs(load_prepared(args.data).test, trained.meta, ec.num_images)
        with progress_bar("bound", "timestep", enabled=dist.is_main) as on_step:
            share = bound_per_example(trained.diffusion, trained.network, x_all, trained.meta,
                                      indices=shard(len(x_all), dist), batch_size=ec.batch_size,
                                      clip_denoised=ec.clip_denoised, seed=params.seed, device=trained.device,
                                      on_step=on_step)
        shares = gather_to_main(share, dist)
        if dist.distributed:
            torch.distributed.destroy_process_group()
        if not dist.is_main:
            return
        report = summarize_bound(merge_parts(shares), trained.meta, ec.clip_denoised)
        atomic_write_csv(args.terms, ["t", "term", "stderr"], report.pop("terms_rows"))
        atomic_write_json(args.metrics, report)
        if tracker is not None:
            tracker.log_metrics(report_metrics(report))
            tracker.log_artifact(args.metrics, "metrics")
            tracker.log_artifact(args.terms, "metrics")
            tracker.finish()

    return run_stage("evaluate", body, parser, argv, hints=HINTS)


HINTS = {
    CheckpointError: "`dvc repro train` writes models/model.pt; retrain if it is from another config",
    DataError: "`dvc repro prepare` rewrites data/prepared",
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared",
    EvaluationError: "no examples: check evaluate.num_images and data.test_size; non-finite values: "
                     "the trained model's outputs are not finite, retrain (`dvc repro train`)",
}


if __name__ == "__main__":
    sys.exit(main())
