"""DVC stage `plot`: report files -> reports/figures/*.png (training loss, samples, the
sampler's trajectory, sample quality against NFE and the noise schedule: family ddpm's beta
schedule with the bound per timestep and the forward process, an SDE's kernel and g(t), NCSN's
sigma ladder), logged to MLflow."""

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
        trained = Params.from_dict(run["params"]) if "params" in run else params
        labels = samples["labels"].tolist() if "labels" in samples.files else None
        figures = [
            save_figure(loss_figure(reports / "train" / "loss.csv"), out / "loss.png"),
            save_figure(samples_figure(samples["samples"], meta, reference=reference), out / "samples.png"),
            save_figure(reverse_process_figure(samples["trajectory"], samples["steps"], meta, reference=reference,
                                               labels=labels, title=SAMPLER_TITLES.get(params.sample.sampler)),
                        out / "reverse_process.png"),
        ]
        if trained.family == "ddpm":
            d = trained.diffusion
            betas = get_beta_schedule(d.beta_schedule, d.timesteps, beta_start=d.beta_start,
                                      beta_end=d.beta_end).numpy()
            figures += [
                save_figure(bound_terms_figure(reports / "eval" / "terms.csv", metrics["unit"]),
                            out / "bound_terms.png"),
                save_figure(forward_process_figure(x0, np.cumprod(1 - betas), meta, seed=params.seed),
                            out / "forward_process.png"),
                save_figure(schedule_figure(betas), out / "schedule.png"),
            ]
        else:
            figures.append(family_schedule(trained, out / "schedule.png"))
        if metrics["quality"]["families"]:  # none for data no metric applies to (the quality stage said so)
            figures.append(save_figure(quality_nfe_figure(reports / "quality" / "nfe.csv",
                                                          metrics["quality"]["samples"]), out / "quality_nfe.png"))
        # After the figures (quick): a malformed report stops the stage before any run is made.
        run_id = run["mlflow_run_id"]
        tracker = Tracker.for_experiment(run_id, params.mlflow.experiment, params.flatten(),
                                         params.mlflow.tracking_uri)
        if tracker is not None:
            # The last stage completes the run when evaluate was reused from DVC's cache (this
            # experiment changed only sample keys, say): the run shows its bound all the same.
            tracker.log_missing_metrics({**report_metrics(metrics), **tracking_metrics(metrics["quality"])})
            for fig in figures:
                tracker.log_artifact(fig, "figures")
            tracker.finish()
            tracker.check_recorded("reruns this stage and logs it")

    return run_stage("plot", body, parser, argv, hints=HINTS)


def family_schedule(params: Params, png_path: Path) -> Path:
    """The noise schedule of a score family: the SDE's kernel and g(t) over t, or NCSN's ladder."""
    if params.family == "ncsn":
        n = params.ncsn
        return save_figure(sigma_ladder_figure(sigma_ladder(n.sigma_max, n.sigma_min, n.num_levels).numpy()), png_path)
    c = params.sde
    if c.type == "ve":
        sde, title = VESDE(c.sigma_min, c.sigma_max, c.num_scales), \
            f"VE SDE: sigma(t) = {c.sigma_min:g} ({c.sigma_max:.4g} / {c.sigma_min:g})^t"
    else:
        sde = (VPSDE if c.type == "vp" else SubVPSDE)(c.beta_min, c.beta_max, c.num_scales)
        name = "VP" if c.type == "vp" else "sub-VP"
        title = f"{name} SDE: beta(t) = {c.beta_min:g} + t ({c.beta_max:g} - {c.beta_min:g})"
    t = torch.linspace(c.eps, 1.0, 400, dtype=torch.float64)
    return save_figure(sde_schedule_figure(t.numpy(), sde.mean_coef(t).numpy(), sde.marginal_std(t).numpy(),
                                           sde.diffusion_coef(t).numpy(), title), png_path)


if __name__ == "__main__":
    sys.exit(main())
