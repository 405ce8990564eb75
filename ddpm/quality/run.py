"""The quality stage's run, drawn from the config: which metric suites apply to the data (each
one dropped said in one line), the suites themselves, and the samples to score: the sample
stage's, then each setting of ``quality.sweep`` drawn with the same per-sample seeds."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from ddpm.config import Params, parse_sampler_setting
from ddpm.errors import CheckpointError
from ddpm.metrics.inception import check_inception_weights
from ddpm.pipeline.build import TrainedModel
from ddpm.pipeline.stage import progress_bar
from ddpm.quality.classifier import load_classifier
from ddpm.quality.report import sampler_nfe, setting_name, with_floors
from ddpm.quality.suites import (
    MetricSuite,
    classifier_suite,
    floor_scores,
    inception_suite,
    on_data_grid,
    raw_suite,
    real_reference,
    score_samples,
    to_model_inputs,
)
from ddpm.sampling.runner import draw_samples

INCEPTION_SKIPPED = (
    "quality: Inception FID/KID/IS skipped: set quality.inception_weights to the path of torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth (download it on a machine with internet) to enable them"
)


def suites_to_run(params: Params, meta: dict[str, Any]) -> list[str]:
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


def build_suites(names: list[str], params: Params, meta: dict[str, Any], classifier_path: str,
              device: torch.device) -> tuple[list[MetricSuite], dict[str, Any]]:
    q, seed = params.quality, params.seed
    families, info = [], {}
    for name in names:
        if name == "classifier":
            classifier, details = load_classifier(classifier_path, device)
            if classifier is None:
                raise CheckpointError(f"{classifier_path} holds no classifier ({details.get('reason')}), "
                                      "but quality.metrics lists classifier")
            info["classifier_test_accuracy"] = details["test_accuracy"]
            families.append(classifier_suite(classifier, details["num_classes"], q.kid_subset_size,
                                                      q.kid_subsets, q.nearest_k, seed, q.batch_size))
        elif name == "inception":
            families.append(inception_suite(q.inception_weights, meta["num_levels"], q.kid_subset_size,
                                                     q.kid_subsets, seed, device))
        else:
            families.append(raw_suite(seed))
    return families, info


def sweep_settings(params: Params) -> tuple[str, ...]:
    """``quality.sweep``: the discrete diffusion's ancestral and DDIM samplers, so family ddpm only."""
    if not params.family_facts.has_diffusion and params.quality.sweep:
        print(f"quality: the sweep {list(params.quality.sweep)} skipped: its samplers (ancestral, ddim) belong to "
              f"family=ddpm, not family={params.family}", file=sys.stderr)
        return ()
    return params.quality.sweep


def sampler_settings_to_score(params: Params, samples: torch.Tensor, sample_nfe: float, trained: TrainedModel,
              sweep: tuple[str, ...]):
    """(sampler, NFE per sample, samples): the sample stage's samples first (with the NFE it
    recorded; the mean over samples for the adaptive ODE), then each ``sweep`` setting not
    already scored, drawn with the sample stage's seeds (sample i from item i of the "sample" stream)."""
    sc, q, T = params.sample, params.quality, params.diffusion.timesteps
    nfe = round(sample_nfe)
    yield sc.sampler, nfe, samples
    done = {(sc.sampler, nfe)}
    for entry in sweep:
        sampler, steps = parse_sampler_setting(entry, T)
        nfe = sampler_nfe(sampler, steps, T)
        if (sampler, nfe) in done:
            continue
        done.add((sampler, nfe))
        with progress_bar(f"sampling {entry}", "step") as on_step:
            drawn, _ = draw_samples(
                trained.diffusion, trained.network, (len(samples), *trained.meta["shape"]), seed=params.seed,
                batch_size=q.batch_size, sampler=sampler, steps=steps, eta=sc.eta,
                clip_denoised=sc.clip_denoised and trained.meta["kind"] == "image", trajectory_frames=2,
                device=trained.device, on_step=on_step)
        yield sampler, nfe, drawn


def reference_draws(names: list[str], train: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The real reference set and the floor draws (``real_reference``); none when no suite runs."""
    if names:
        return real_reference(train, n, seed)
    # Nothing to score (say, a folder without labels or Inception weights): no real draws needed.
    return train[:0], []


def scores_of(row: dict[str, Any]) -> dict[str, float]:
    """A row's metric columns, without its setting, sampler and NFE."""
    return {k: v for k, v in row.items() if k not in ("setting", "sampler", "nfe")}


def quality_run(names: list[str], params: Params, meta: dict[str, Any], real: np.ndarray,
                real_draws: list[np.ndarray], samples: torch.Tensor, sample_nfe: float,
                trained: TrainedModel, classifier_path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The report (quality.json) and one row of scores per sampler setting, the sample stage's first."""
    reference = to_model_inputs(real, meta)
    suites, info = build_suites(names, params, meta, classifier_path, trained.device)
    floors = floor_scores(suites, [to_model_inputs(d, meta) for d in real_draws], reference) if suites else {}
    rows = []
    # Without a metric there is nothing to compare across sampler settings: no sweep.
    for sampler, nfe, drawn in sampler_settings_to_score(params, samples, sample_nfe, trained,
                                                         sweep_settings(params) if suites else ()):
        scores = score_samples(suites, on_data_grid(drawn, meta), reference)
        rows.append({"setting": setting_name(sampler, nfe), "sampler": sampler, "nfe": nfe, **scores})
    headline = {"sampler": rows[0]["sampler"], "nfe": rows[0]["nfe"], **with_floors(scores_of(rows[0]), floors)}
    sweep = {row["setting"]: {"nfe": row["nfe"], **scores_of(row)} for row in rows[1:]}
    report = {"num_samples": len(samples), "floor_draws": len(real_draws), "families": [f.name for f in suites],
              **info, "samples": headline, "sweep": sweep}
    return report, rows
