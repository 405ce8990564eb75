"""DVC stage `quality`: the sample quality of reports/samples (the sample stage's samples)
and of the sampler settings in `quality.sweep`, each drawn with the same number of samples
and the same per-sample seeds, against n real training examples; every metric next to its
floor (ddpm.quality.suites) -> reports/quality/quality.json and reports/quality/nfe.csv (each
metric against the number of network evaluations), logged to the experiment's MLflow run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ddpm.config import load_params
from ddpm.data import load_prepared
from ddpm.errors import CheckpointError, DataError, DatasetNotFoundError, EvaluationError
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.pipeline.build import load_for_inference
from ddpm.pipeline.runtime import set_tf32
from ddpm.pipeline.stage import run_stage, stage_parser
from ddpm.pipeline.tracking import Tracker
from ddpm.quality.report import format_table, tracking_metrics
from ddpm.quality.run import quality_run, reference_draws, scores_of, suites_to_run


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--classifier", default="models/classifier.pt")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--samples", default="reports/samples/samples.npz")
    parser.add_argument("--out", default="reports/quality")
    return run_stage("quality", body, parser, argv, hints=HINTS)


def body(args) -> None:
    params = load_params(args.params)
    prepared = load_prepared(args.data)
    names = suites_to_run(params, prepared.meta)
    samples, sample_nfe = _load_samples(args.samples)
    real, real_draws = reference_draws(names, prepared.train, len(samples), params.seed)
    set_tf32(False)  # the reported numbers are computed in full float32
    dist, trained = load_for_inference(args.model, params, params.sample.use_ema)
    # Found or made before the work, so an unusable store is reported before any sampling.
    tracker = Tracker.for_experiment(trained.mlflow_run_id, params.mlflow.experiment, params.flatten(),
                                     params.mlflow.tracking_uri)
    report, rows = quality_run(names, params, prepared.meta, real, real_draws, samples, sample_nfe, trained,
                               args.classifier)
    first, rows = rows[0], sorted(rows, key=lambda row: row["nfe"])
    out = Path(args.out)
    atomic_write_json(out / "quality.json", report)
    columns = ["setting", "sampler", "nfe", *scores_of(rows[0])]
    atomic_write_csv(out / "nfe.csv", columns, [[row[c] for c in columns] for row in rows])
    print(f"sample quality of {len(samples)} samples ({first['setting']}) against {len(samples)} real "
          f"training examples; floor: the mean (+- std) over {len(real_draws)} other real draw(s) of that size\n"
          f"{format_table(report['samples'])}")
    if tracker is not None:
        tracker.log_metrics(tracking_metrics(report))
        for row in rows:
            tracker.log_metrics({f"{k}_vs_nfe": v for k, v in scores_of(row).items()}, step=row["nfe"])
        for name in ("quality.json", "nfe.csv"):
            tracker.log_artifact(out / name, "quality")
        tracker.finish()
        tracker.check_recorded("reruns this stage and logs it")


def _load_samples(path: str) -> tuple[torch.Tensor, float]:
    """The samples and their mean number of network evaluations (the sample stage's ``nfe``)."""
    try:
        with np.load(path) as npz:
            return torch.as_tensor(npz["samples"]), float(npz["nfe"].mean())
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} not found: the samples to score") from None
    except (KeyError, ValueError, OSError) as err:
        raise DataError(f"{path}: not a samples file with an array 'samples' ({err})") from None


HINTS = {
    CheckpointError: "`dvc repro train` writes models/model.pt and `dvc repro classifier` models/classifier.pt",
    DataError: "`dvc repro prepare` rewrites data/prepared, `dvc repro sample` reports/samples",
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared, `dvc repro sample` reports/samples",
    EvaluationError: "too few real examples: lower sample.num_samples; non-finite samples: the model diverged, "
                     "retrain (`dvc repro train`)",
}


if __name__ == "__main__":
    sys.exit(main())
