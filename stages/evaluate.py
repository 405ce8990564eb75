"""DVC stage `evaluate`: the full variational bound (all T terms) of the test split under
the trained model -> reports/metrics.json (bits/dim for images, nats/dim for vectors:
total, prior, decoder, standard error, number of examples) and reports/eval/terms.csv."""

from __future__ import annotations

import sys
from pathlib import Path

from ddpm.cli import run_stage, stage_parser
from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.evaluation import evaluate_bound
from ddpm.factory import load_trained
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.runtime import resolve_device, set_threads
from ddpm.tracking import Tracker


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--metrics", default="reports/metrics.json")
    parser.add_argument("--terms", default="reports/eval/terms.csv")

    def body(args) -> None:
        params = load_params(args.params)
        ec = params.evaluate
        set_threads(params.train.num_threads)
        device = resolve_device(params.train.device)
        trained = load_trained(args.model, params, device, use_ema=ec.use_ema)
        prepared = load_prepared(args.data)
        report = evaluate_bound(trained.diffusion, trained.network, prepared.test, trained.meta,
                                num_images=ec.num_images, batch_size=ec.batch_size,
                                clip_denoised=ec.clip_denoised, seed=params.seed, device=device)
        atomic_write_csv(args.terms, ["t", "term", "stderr"], report.pop("terms_rows"))
        atomic_write_json(args.metrics, report)
        tracker = Tracker.resume(trained.mlflow_run_id, params.mlflow.experiment, params.mlflow.tracking_uri)
        if tracker is not None:
            tracker.log_metrics({f"{report['metric']}_{k}" if k != "total" else report["metric"]: v
                                 for k, v in report[report["metric"]].items()})
            tracker.log_artifact(args.metrics, "metrics")
            tracker.log_artifact(args.terms, "metrics")

    return run_stage("evaluate", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
