"""DVC stage `plot`: report files -> reports/figures/*.png (training loss, samples, the
sampler's trajectory, sample quality against NFE and the noise schedule: family ddpm's beta
schedule with the bound per timestep and the forward process, an SDE's kernel and g(t), NCSN's
sigma ladder), logged to MLflow; sets the experiment's view in MLflow's UI and the run's
description, the last stage to run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ddpm.config import Params, load_params
from ddpm.data import load_prepared, to_model_space
from ddpm.errors import DataError, DatasetNotFoundError
from ddpm.pipeline.stage import run_stage, stage_parser
from ddpm.pipeline.tracking import Tracker, report_metrics
from ddpm.pipeline.view import describe, set_experiment_view
from ddpm.plotting import (
    SAMPLER_TITLES,
    bound_terms_figure,
    forward_process_figure,
    loss_figure,
    quality_nfe_figure,
    reverse_process_figure,
    samples_figure,
    save_figure,
    schedule_figure,
    sde_schedule_figure,
    sigma_ladder_figure,
)
from ddpm.quality.report import tracking_metrics
from ddpm.schedules import get_beta_schedule
from ddpm.score.ncsn import sigma_ladder
from ddpm.score.sde import VESDE, VPSDE, SubVPSDE

HINTS = {
    DataError: "`dvc repro` rewrites data/prepared and the reports this stage reads (it reruns a stage whose "
               "outputs were edited)",
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared",
}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--run", default="models/run.json", help="the train stage's MLflow run id")
    parser.add_argument("--out", default="reports/figures")
    return run_stage("plot", body, parser, argv, hints=HINTS)


def body(args) -> None:
    params = load_params(args.params)
    reports, out = Path(args.reports), Path(args.out)
    prepared = load_prepared(args.data)
    meta = prepared.meta
    metrics = json.loads((reports / "metrics.json").read_text())
    samples = np.load(reports / "samples" / "samples.npz")
    test = prepared.test[:2000]
    x0 = to_model_space(test, meta["num_levels"]) if meta["kind"] == "image" else test
    reference = x0 if meta["kind"] == "vector" else None
    run = json.loads(Path(args.run).read_text())
    # The family and its settings as trained (sigma_max and the levels derived from the data).
    trained = Params.from_dict(run["params"])
    labels = samples["labels"].tolist()
    figures = [
        save_figure(loss_figure(reports / "train" / "loss.csv"), out / "loss.png"),
        save_figure(samples_figure(samples["samples"], meta, reference=reference), out / "samples.png"),
        save_figure(reverse_process_figure(samples["trajectory"], samples["steps"], meta, reference=reference,
                                           labels=labels, title=SAMPLER_TITLES.get(params.sample.sampler)),
                    out / "reverse_process.png"),
        *FAMILY_FIGURES[trained.family](trained, params.seed, x0, meta, metrics, reports, out),
    ]
    if metrics["quality"]["families"]:  # none for data no metric applies to (the quality stage said so)
        figures.append(save_figure(quality_nfe_figure(reports / "quality" / "nfe.csv", metrics["quality"]["samples"]),
                                   out / "quality_nfe.png"))
    # After the figures (quick): a malformed report stops the stage before any run is made.
    tracker = Tracker.for_experiment(run["mlflow_run_id"], params.mlflow.experiment, params.flatten(),
                                     params.mlflow.tracking_uri)
    if tracker is not None:
        # The last stage completes the run when evaluate was reused from DVC's cache (this
        # experiment changed only sample keys, say): the run shows its bound all the same.
        tracker.log_missing_metrics({**report_metrics(metrics), **tracking_metrics(metrics["quality"])})
        for fig in figures:
            tracker.log_artifact(fig, "figures")
        # The experiment's view and the run's description: here only, so that editing them
        # (ddpm/pipeline/view.py) reruns this stage alone.
        set_experiment_view(tracker)
        describe(tracker)
        tracker.finish()
        tracker.check_recorded("reruns this stage and logs it")


def ddpm_figures(trained: Params, seed: int, x0, meta: dict, metrics: dict, reports: Path, out: Path) -> list[Path]:
    """The discrete diffusion's: the bound per timestep, the forward process and the beta schedule."""
    d = trained.diffusion
    betas = get_beta_schedule(d.beta_schedule, d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end).numpy()
    return [
        save_figure(bound_terms_figure(reports / "eval" / "terms.csv", metrics["unit"]), out / "bound_terms.png"),
        save_figure(forward_process_figure(x0, np.cumprod(1 - betas), meta, seed=seed), out / "forward_process.png"),
        save_figure(schedule_figure(betas), out / "schedule.png"),
    ]


def sde_figures(trained: Params, seed: int, x0, meta: dict, metrics: dict, reports: Path, out: Path) -> list[Path]:
    """A score SDE's noise schedule: its kernel's mean coefficient and std and g(t) over t."""
    c = trained.sde
    if c.type == "ve":
        sde, title = VESDE(c.sigma_min, c.sigma_max, c.num_scales), \
            f"VE SDE: sigma(t) = {c.sigma_min:g} ({c.sigma_max:.4g} / {c.sigma_min:g})^t"
    else:
        sde = (VPSDE if c.type == "vp" else SubVPSDE)(c.beta_min, c.beta_max, c.num_scales)
        name = "VP" if c.type == "vp" else "sub-VP"
        title = f"{name} SDE: beta(t) = {c.beta_min:g} + t ({c.beta_max:g} - {c.beta_min:g})"
    t = torch.linspace(c.eps, 1.0, 400, dtype=torch.float64)
    return [save_figure(sde_schedule_figure(t.numpy(), sde.mean_coef(t).numpy(), sde.marginal_std(t).numpy(),
                                            sde.diffusion_coef(t).numpy(), title), out / "schedule.png")]


def ncsn_figures(trained: Params, seed: int, x0, meta: dict, metrics: dict, reports: Path, out: Path) -> list[Path]:
    """NCSN's noise schedule: its sigma ladder."""
    n = trained.ncsn
    ladder = sigma_ladder(n.sigma_max, n.sigma_min, n.num_levels).numpy()
    return [save_figure(sigma_ladder_figure(ladder), out / "schedule.png")]


# Each family's own figures beside the ones every family has.
FAMILY_FIGURES = {"ddpm": ddpm_figures, "sde": sde_figures, "ncsn": ncsn_figures}


if __name__ == "__main__":
    sys.exit(main())
