"""Time to quality of the default digits run: train the default network with one setting
changed (steps, learning rate and its schedule, batch, width), then compute the exact bound on the
whole test split, and print training seconds beside bits/dim and its standard error.

Settings are given as ``key=value`` lists, one per run, with the params keys a user types:

    python benchmarks/time_to_quality.py --data data/prepared \
        train.steps=3000 \
        train.steps=1500,train.lr_schedule=cosine,train.lr=2e-3

Each run goes through ``ddpm.training.loop.train`` and ``ddpm.evaluation.bound.bound_per_example``, the
code paths of the train and evaluate stages (the train stage's EMA weights, the evaluate stage's
float32 bound over all T timesteps). ``--data`` is a prepared digits folder (``dvc repro
prepare``). A constant learning rate makes a run's state at step s the state of a run of s steps,
so the train stage's ``reports/train/bound.csv`` already gives that curve; a decaying schedule
needs a run per length. The Frechet distance of each setting comes from ``dvc exp run -S ...``
with the same keys, or from ``--classifier models/classifier.pt``: the Frechet distance in the
classifier's features of ``sample.num_samples`` ancestral samples of the EMA network against the
quality stage's reference set (``ddpm.quality.suites``: the same samples, reference and features as
the sample and quality stages; its floor is the quality stage's ``fd_classifier_floor``).
``--save DIR`` keeps each run's EMA weights, and a setting ``weights=FILE`` scores saved weights
instead of training (its train_s is then null).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from _common import cpu_name, load_average

from ddpm.config import Params, ParamsLoader
from ddpm.data import load_prepared
from ddpm.evaluation.bound import bound_per_example, evaluation_inputs, summarize_bound
from ddpm.pipeline.build import build_diffusion, build_network, data_resolved_params
from ddpm.quality import suites as quality
from ddpm.quality.classifier import load_classifier
from ddpm.sampling.runner import draw_samples
from ddpm.training.loop import resolved_params, train


def setting_params(base: dict, setting: str) -> Params:
    """``base`` (params.yaml read as load_params reads it) with the ``key=value`` items of
    ``setting``, each value read as YAML as ``dvc exp run -S`` writes it."""
    raw = json.loads(json.dumps(base))
    for item in filter(None, setting.split(",")):
        key, value = item.split("=", 1)
        *sections, name = key.split(".")
        target = raw
        for s in sections:
            target = target.setdefault(s, {})
        target[name] = yaml.load(value, Loader=ParamsLoader)
    return Params.from_dict(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="comma-separated key=value overrides, one run each")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--classifier", help="the classifier stage's models/classifier.pt: also the Frechet distance")
    parser.add_argument("--save", type=Path, help="a folder for each run's EMA weights")
    parser.add_argument("--no-bound", action="store_true", help="skip the bound (e.g. saved weights already scored)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = load_prepared(args.data)
    base = yaml.load(Path(args.params).read_text(), Loader=ParamsLoader)
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, load {load_average()}", flush=True)
    for setting in args.settings:
        items = [i for i in setting.split(",") if i and not i.startswith("weights=")]
        weights = next((i.split("=", 1)[1] for i in setting.split(",") if i.startswith("weights=")), None)
        params = data_resolved_params(setting_params(base, ",".join(items)),
                                      evaluation_inputs(prepared.train, prepared.meta))
        device, row = torch.device("cpu"), {"setting": setting or "default"}
        if weights is None:
            t0 = time.perf_counter()
            result = train(params, prepared.train, prepared.meta, device, progress=False)
            row["train_s"] = round(time.perf_counter() - t0, 1)
            ema = result.ema.eval()
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                torch.save(ema.state_dict(), args.save / f"{len(list(args.save.glob('*.pt'))):02d}.pt")
        else:
            ema = build_network(params, prepared.meta)
            ema.load_state_dict(torch.load(weights, weights_only=True))
            ema.eval()
            row["train_s"] = None
        used = resolved_params(params, prepared.meta, device).train
        row.update(precision=used.precision, steps=used.steps)
        diffusion = build_diffusion(params)
        if not args.no_bound:
            x_all = evaluation_inputs(prepared.test, prepared.meta, params.evaluate.num_images)
            t0 = time.perf_counter()
            parts = bound_per_example(diffusion, ema, x_all, prepared.meta, batch_size=params.evaluate.batch_size,
                                      clip_denoised=params.evaluate.clip_denoised, seed=params.seed, device=device)
            report = summarize_bound(parts, prepared.meta, params.evaluate.clip_denoised)
            row.update(bpd=report["bpd"]["total"], stderr=report["bpd"]["stderr"],
                       bound_s=round(time.perf_counter() - t0, 1))
        if args.classifier:
            row.update(frechet_distance(params, prepared, diffusion, ema, args.classifier))
        print(json.dumps(row), flush=True)


def frechet_distance(params: Params, prepared, diffusion, ema, classifier_path: str) -> dict:
    """The sample stage's ancestral samples of ``ema``, scored as the quality stage scores them."""
    sc = params.sample
    shape = (sc.num_samples, *prepared.meta["shape"])
    t0 = time.perf_counter()
    samples, _ = draw_samples(diffusion, ema, shape, seed=params.seed, batch_size=sc.batch_size,
                              clip_denoised=sc.clip_denoised, trajectory_frames=1)
    sample_s = time.perf_counter() - t0
    classifier, info = load_classifier(classifier_path)
    q = params.quality
    family = quality.classifier_suite(classifier, info["num_classes"], q.kid_subset_size, q.kid_subsets,
                                       q.nearest_k, params.seed)
    reference = quality.to_model_inputs(quality.real_reference(prepared.train, sc.num_samples, params.seed)[0],
                                        prepared.meta)
    scores = quality.score_samples([family], quality.on_data_grid(samples, prepared.meta), reference)
    return {"fd_classifier": scores["fd_classifier"], "sample_s": round(sample_s, 1)}

if __name__ == "__main__":
    main()
