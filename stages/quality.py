"""DVC stage `quality`: the sample quality of reports/samples (the sample stage's samples)
and of the sampler settings in `quality.sweep`, each drawn with the same number of samples
and the same per-sample seeds, against n real training examples; every metric next to its
floor (ddpm.quality) -> reports/quality/quality.json and reports/quality/nfe.csv (each
metric against the number of network evaluations), logged to the experiment's MLflow run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm import quality
from ddpm.classifier import load_classifier
from ddpm.cli import progress_bar, run_stage, stage_parser
from ddpm.config import Params, load_params, parse_sampler_setting
from ddpm.data import load_prepared
from ddpm.errors import CheckpointError, DataError, DatasetNotFoundError, EvaluationError
from ddpm.factory import TrainedModel, load_for_inference
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.metrics.inception import check_inception_weights
from ddpm.runtime import set_tf32
from ddpm.samplers import draw_samples
from ddpm.tracking import Tracker

INCEPTION_SKIPPED = (
    "quality: Inception FID/KID/IS skipped: set quality.inception_weights to the path of torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth (download it on a machine with internet) to enable them"
)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--classifier", default="models/classifier.pt")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--samples", default="reports/samples/samples.npz")
    parser.add_argument("--out", default="reports/quality")

    def body(args) -> None:
        params = load_params(args.params)
        prepared = load_prepared(args.data)
        meta = prepared.meta
        names = _families_to_run(params, meta)
        samples, sample_nfe = _load_samples(args.samples)
        if names:
            real, real_draws = quality.real_reference(prepared.train, len(samples), params.seed)
        else:  # nothing to score (say, a folder without labels or Inception weights): no real draws needed
            real, real_draws = prepared.train[:0], []
        set_tf32(False)  # the reported numbers are computed in full float32
        dist, trained = load_for_inference(args.model, params, params.sample.use_ema)
        # Found or made before the work, so an unusable store is reported before any sampling.
        tracker = Tracker.for_experiment(trained.mlflow_run_id, params.mlflow.experiment, params.flatten(),
                                         params.mlflow.tracking_uri)
        reference = quality.to_model_inputs(real, meta)
        families, info = _families(names, params, meta, args.classifier, trained.device)
        floors = (quality.floor_scores(families, [quality.to_model_inputs(d, meta) for d in real_draws], reference)
                  if families else {})
        rows = []
        # Without a metric there is nothing to compare across sampler settings: no sweep.
        for sampler, nfe, drawn in _settings(params, samples, sample_nfe, trained,
                                             _sweep(params) if families else ()):
            scores = quality.score_samples(families, quality.on_data_grid(drawn, meta), reference)
            rows.append({"setting": quality.setting_name(sampler, nfe), "sampler": sampler, "nfe": nfe, **scores})
        headline = {"sampler": rows[0]["sampler"], "nfe": rows[0]["nfe"],
                    **quality.with_floors(_scores(rows[0]), floors)}
        sweep = {row["setting"]: {"nfe": row["nfe"], **_scores(row)} for row in rows[1:]}
        report = {"num_samples": len(samples), "floor_draws": len(real_draws),
                  "families": [f.name for f in families], **info,
                  "samples": headline, "sweep": sweep}
        out = Path(args.out)
        atomic_write_json(out / "quality.json", report)
        columns = ["setting", "sampler", "nfe", *_scores(rows[0])]
        atomic_write_csv(out / "nfe.csv", columns, [[row[c] for c in columns] for row in sorted(rows, key=_nfe)])
        print(f"sample quality of {len(samples)} samples ({rows[0]['setting']}) against {len(samples)} real "
              f"training examples; floor: the mean (+- std) over {len(real_draws)} other real draw(s) of that size\n"
              f"{quality.format_table(headline)}")
        if tracker is not None:
            tracker.log_metrics(quality.tracking_metrics(report))
            for row in sorted(rows, key=_nfe):
                tracker.log_metrics({f"{k}_vs_nfe": v for k, v in _scores(row).items()}, step=row["nfe"])
            for name in ("quality.json", "nfe.csv"):
                tracker.log_artifact(out / name, "quality")
            tracker.finish()
            tracker.check_recorded("reruns this stage and logs it")

    return run_stage("quality", body, parser, argv, hints=HINTS)


def _families_to_run(params: Params, meta: dict[str, Any]) -> list[str]:
    """The families of ``quality.metrics`` that this data can serve, each dropped family said in
    one line: Inception without weights (and how to enable it), or for images that are not
    RGB; the classifier for data without labels. The weights file is checked here, before any
    work."""
    names = list(params.quality.metrics)
    if "classifier" in names and meta.get("num_classes") is None:
        print(f"quality: classifier metrics skipped: dataset {meta['dataset']!r} has no class labels", file=sys.stderr)
        names.remove("classifier")
    if "inception" in names and meta["shape"][0] != 3:
        print(f"quality: Inception metrics skipped: the images have {meta['shape'][0]} channel(s), not 3",
              file=sys.stderr)
        names.remove("inception")
    if "inception" in names:
        weights = params.quality.inception_weights.strip()
        if not weights:
            print(INCEPTION_SKIPPED, file=sys.stderr)
            names.remove("inception")
        else:
            check_inception_weights(weights)
    if not names:
        print(f"quality: no sample-quality metric applies to dataset {meta['dataset']!r} with quality.metrics="
              f"{list(params.quality.metrics)}; the report lists none", file=sys.stderr)
    return names


def _families(names: list[str], params: Params, meta: dict[str, Any], classifier_path: str,
              device: torch.device) -> tuple[list[quality.Family], dict[str, Any]]:
    q, seed = params.quality, params.seed
    families, info = [], {}
    for name in names:
        if name == "classifier":
            classifier, details = load_classifier(classifier_path, device)
            if classifier is None:
                raise CheckpointError(f"{classifier_path} holds no classifier ({details.get('reason')}), "
                                      "but quality.metrics lists classifier")
            info["classifier_test_accuracy"] = details["test_accuracy"]
            families.append(quality.classifier_family(classifier, details["num_classes"], q.kid_subset_size,
                                                      q.kid_subsets, q.nearest_k, seed, q.batch_size))
        elif name == "inception":
            families.append(quality.inception_family(q.inception_weights, meta["num_levels"], q.kid_subset_size,
                                                     q.kid_subsets, seed, device))
        else:
            families.append(quality.raw_family(seed))
    return families, info


def _sweep(params: Params) -> tuple[str, ...]:
    """``quality.sweep``: the discrete diffusion's ancestral and DDIM samplers, so family ddpm only."""
    if params.family != "ddpm" and params.quality.sweep:
        print(f"quality: the sweep {list(params.quality.sweep)} skipped: its samplers (ancestral, ddim) belong to "
              f"family=ddpm, not family={params.family}", file=sys.stderr)
        return ()
    return params.quality.sweep


def _settings(params: Params, samples: torch.Tensor, sample_nfe: float | None, trained: TrainedModel,
              sweep: tuple[str, ...]):
    """(sampler, NFE per sample, samples): the sample stage's samples first (with the NFE it
    recorded; the mean over samples for the adaptive ODE), then each ``sweep`` setting not
    already scored, drawn with the sample stage's seeds (sample i from item i of the "sample" stream)."""
    sc, q, T = params.sample, params.quality, params.diffusion.timesteps
    nfe = quality.sampler_nfe(sc.sampler, sc.steps, T) if sample_nfe is None else round(sample_nfe)
    yield sc.sampler, nfe, samples
    done = {(sc.sampler, nfe)}
    for entry in sweep:
        sampler, steps = parse_sampler_setting(entry, T)
        if (sampler, quality.sampler_nfe(sampler, steps, T)) in done:
            continue
        done.add((sampler, quality.sampler_nfe(sampler, steps, T)))
        with progress_bar(f"sampling {entry}", "step") as on_step:
            drawn, _ = draw_samples(
                trained.diffusion, trained.network, (len(samples), *trained.meta["shape"]), seed=params.seed,
                batch_size=q.batch_size, sampler=sampler, steps=steps, eta=sc.eta,
                clip_denoised=sc.clip_denoised and trained.meta["kind"] == "image", trajectory_frames=2,
                device=trained.device, on_step=on_step)
        yield sampler, quality.sampler_nfe(sampler, steps, T), drawn


def _load_samples(path: str) -> tuple[torch.Tensor, float | None]:
    """The samples and their mean NFE (None in a samples file from before NFE was recorded)."""
    try:
        with np.load(path) as npz:
            return torch.as_tensor(npz["samples"]), float(npz["nfe"].mean()) if "nfe" in npz.files else None
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} not found: the samples to score") from None
    except (KeyError, ValueError, OSError) as err:
        raise DataError(f"{path}: not a samples file with an array 'samples' ({err})") from None


def _scores(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in ("setting", "sampler", "nfe")}


def _nfe(row: dict[str, Any]) -> int:
    return row["nfe"]


HINTS = {
    CheckpointError: "`dvc repro train` writes models/model.pt and `dvc repro classifier` models/classifier.pt",
    DataError: "`dvc repro prepare` rewrites data/prepared, `dvc repro sample` reports/samples",
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared, `dvc repro sample` reports/samples",
    EvaluationError: "too few real examples: lower sample.num_samples; non-finite samples: the model diverged, "
                     "retrain (`dvc repro train`)",
}


if __name__ == "__main__":
    sys.exit(main())
