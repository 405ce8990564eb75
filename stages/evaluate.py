"""DVC stage `evaluate`: the full variational bound (all T terms) of the test split under
the trained model -> reports/metrics.json (bits/dim for images, nats/dim for vectors:
total, prior, decoder, standard error, number of examples) and reports/eval/terms.csv.
Under torchrun the test images are spread over the ranks and gathered on rank 0."""

from __future__ import annotations

import sys

import torch

from ddpm.cli import run_stage, stage_parser
from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.evaluation import bound_per_example, merge_parts, summarize_bound, evaluation_inputs
from ddpm.factory import load_trained
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.runtime import dist_info, gather_to_main, init_distributed, resolve_device, set_tf32, set_threads, shard
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
        dist = dist_info()
        set_threads(params.train.num_threads)
        set_tf32(False)  # the reported number is computed in full float32 (and float64 math)
        device = init_distributed(resolve_device(params.train.device), dist)
        trained = load_trained(args.model, params, device, use_ema=ec.use_ema)
        x_all = evaluation_inputs(load_prepared(args.data).test, trained.meta, ec.num_images)
        share = bound_per_example(trained.diffusion, trained.network, x_all, trained.meta,
                                  indices=shard(len(x_all), dist), batch_size=ec.batch_size,
                                  clip_denoised=ec.clip_denoised, seed=params.seed, device=device,
                                  progress=dist.is_main)
        shares = gather_to_main(share, dist)
        if dist.distributed:
            torch.distributed.destroy_process_group()
        if not dist.is_main:
            return
        report = summarize_bound(merge_parts(shares), trained.meta, ec.clip_denoised)
        atomic_write_csv(args.terms, ["t", "term", "stderr"], report.pop("terms_rows"))
        atomic_write_json(args.metrics, report)
        tracker = Tracker.resume(trained.mlflow_run_id, params.mlflow.experiment, params.mlflow.tracking_uri)
        if tracker is not None:
            metric = report["metric"]
            tracker.log_metrics({metric if k == "total" else f"{metric}_{k}": v for k, v in report[metric].items()})
            tracker.log_artifact(args.metrics, "metrics")
            tracker.log_artifact(args.terms, "metrics")

    return run_stage("evaluate", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
