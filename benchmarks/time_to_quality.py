"""Time to quality of the default digits run: train the default network with one setting
changed (steps, learning rate and its schedule, batch, width), then compute the exact bound on the
whole test split, and print training seconds beside bits/dim and its standard error.

Settings are given as ``key=value`` lists, one per run, with the params keys a user types:

    python benchmarks/time_to_quality.py --data data/prepared \
        train.steps=3000 \
        train.steps=1500,train.lr_schedule=cosine,train.lr=2e-3

Each run goes through ``ddpm.training.train`` and ``ddpm.evaluation.bound_per_example``, the
code paths of the train and evaluate stages (the train stage's EMA weights, the evaluate stage's
float32 bound over all T timesteps). ``--data`` is a prepared digits folder (``dvc repro
prepare``). A constant learning rate makes a run's state at step s the state of a run of s steps,
so the train stage's ``reports/train/bound.csv`` already gives that curve; a decaying schedule
needs a run per length. The Frechet distance of each setting comes from ``dvc exp run -S ...``
with the same keys (benchmarks/README.md).
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
from ddpm.evaluation import bound_per_example, evaluation_inputs, summarize_bound
from ddpm.factory import build_diffusion, data_resolved_params
from ddpm.training import resolved_params, train


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = load_prepared(args.data)
    base = yaml.load(Path(args.params).read_text(), Loader=ParamsLoader)
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, load {load_average()}", flush=True)
    for setting in args.settings:
        params = data_resolved_params(setting_params(base, setting), evaluation_inputs(prepared.train, prepared.meta))
        device = torch.device("cpu")
        t0 = time.perf_counter()
        result = train(params, prepared.train, prepared.meta, device, progress=False)
        train_s = time.perf_counter() - t0
        x_all = evaluation_inputs(prepared.test, prepared.meta, params.evaluate.num_images)
        t0 = time.perf_counter()
        parts = bound_per_example(build_diffusion(params), result.ema.eval(), x_all, prepared.meta,
                                  batch_size=params.evaluate.batch_size, clip_denoised=params.evaluate.clip_denoised,
                                  seed=params.seed, device=device)
        report = summarize_bound(parts, prepared.meta, params.evaluate.clip_denoised)
        used = resolved_params(params, prepared.meta, device).train
        print(json.dumps({"setting": setting or "default", "precision": used.precision, "steps": used.steps,
                          "bpd": report["bpd"]["total"], "stderr": report["bpd"]["stderr"],
                          "train_s": round(train_s, 1), "bound_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
