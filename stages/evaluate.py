"""DVC stage `evaluate`: the likelihood of the test split under the trained model ->
reports/eval/bound.json (the report stage puts it into reports/metrics.json) and
reports/eval/terms.csv. MetricSuite ddpm: the full variational bound (all T terms; bits/dim for
images, nats/dim for vectors: total, prior, decoder, standard error, number of examples) and,
beside it, the probability-flow ODE likelihood of the first ode.num_images test examples
(``ode_bpd`` / ``ode_nll``, with its NFE and solver settings); family sde: the ODE likelihood
alone; family ncsn: none (it says so). Under torchrun the test examples are spread over the
ranks and gathered on rank 0."""

from __future__ import annotations

import sys

import torch

from ddpm.config import Params, load_params
from ddpm.data import load_prepared
from ddpm.errors import CheckpointError, DataError, DatasetNotFoundError, EvaluationError
from ddpm.evaluation.bound import bound_per_example, evaluation_inputs, merge_parts, summarize_bound
from ddpm.evaluation.ode_likelihood import OdeSettings, merge_ode_parts, ode_likelihood_per_example, summarize_ode
from ddpm.io import atomic_write_csv, atomic_write_json
from ddpm.pipeline.build import TrainedModel, load_for_inference, score_model
from ddpm.pipeline.runtime import gather_to_main, set_tf32, shard
from ddpm.pipeline.stage import progress_bar, run_stage, stage_parser
from ddpm.pipeline.tracking import Tracker, report_metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--metrics", default="reports/eval/bound.json")
    parser.add_argument("--terms", default="reports/eval/terms.csv")
    return run_stage("evaluate", body, parser, argv, hints=HINTS)


def body(args) -> None:
    params = load_params(args.params)
    set_tf32(False)  # the reported number is computed in full float32 (and float64 math)
    dist, trained = load_for_inference(args.model, params, params.evaluate.use_ema)
    # Found or made before the work, so an unusable store is reported before the bound.
    tracker = Tracker.for_experiment(trained.mlflow_run_id, params.mlflow.experiment, params.flatten(),
                                     params.mlflow.tracking_uri) if dist.is_main else None
    test = load_prepared(args.data).test
    facts = trained.params.family_facts
    report, terms_rows = {}, []
    if facts.has_bound:
        report, terms_rows = _bound(params, trained, test, dist)
    if facts.has_ode_likelihood and params.ode.num_images > 0:
        report.update(_ode_likelihood(params, trained, test, dist) or {})
    if dist.distributed:
        torch.distributed.destroy_process_group()
    if not dist.is_main:
        return
    if not (facts.has_bound or facts.has_ode_likelihood):
        report["likelihood"] = NO_LIKELIHOOD
    atomic_write_csv(args.terms, ["t", "term", "stderr"], terms_rows)
    atomic_write_json(args.metrics, report)
    if tracker is not None:
        tracker.log_metrics(report_metrics(report))
        tracker.log_artifact(args.metrics, "metrics")
        tracker.log_artifact(args.terms, "metrics")
        tracker.finish()
        tracker.check_recorded("reruns this stage and logs it")


def _bound(params: Params, trained: TrainedModel, test, dist) -> tuple[dict, list]:
    """The full variational bound of the first ``evaluate.num_images`` test examples and its
    per-timestep terms (rank 0 gets the report)."""
    ec = params.evaluate
    x_all = evaluation_inputs(test, trained.meta, ec.num_images)
    with progress_bar("bound", "timestep", enabled=dist.is_main) as on_step:
        share = bound_per_example(trained.diffusion, trained.network, x_all, trained.meta,
                                  indices=shard(len(x_all), dist), batch_size=ec.batch_size,
                                  clip_denoised=ec.clip_denoised, seed=params.seed, device=trained.device,
                                  on_step=on_step)
    shares = gather_to_main(share, dist)
    if not dist.is_main:
        return {}, []
    report = summarize_bound(merge_parts(shares), trained.meta, ec.clip_denoised)
    return report, report.pop("terms_rows")


# NCSN's model is a chain of Langevin samplers: it defines no density to evaluate.
NO_LIKELIHOOD = ("none: family=ncsn (annealed Langevin dynamics) defines no tractable likelihood; "
                 "the families ddpm and sde report the probability-flow ODE's")


def _ode_likelihood(params: Params, trained: TrainedModel, test, dist) -> dict | None:
    """The ODE likelihood of the first ``ode.num_images`` test examples (rank 0 gets the report)."""
    o = params.ode
    settings = OdeSettings(rtol=o.rtol, atol=o.atol, eps=o.eps, exact_divergence=o.divergence == "exact",
                           repeats=o.repeats)
    x_all = evaluation_inputs(test, trained.meta, o.num_images)
    model = score_model(trained)
    if dist.is_main:
        print(f"evaluate: probability-flow ODE likelihood of {len(x_all)} test examples ({o.divergence} divergence, "
              f"rtol={o.rtol:g}, atol={o.atol:g}, {o.repeats} dequantization draw(s))", file=sys.stderr)
    share = ode_likelihood_per_example(model.sde, model.score, x_all, trained.meta, settings,
                                       indices=shard(len(x_all), dist), batch_size=params.evaluate.batch_size,
                                       seed=params.seed, device=trained.device)
    shares = gather_to_main(share, dist)
    return summarize_ode(merge_ode_parts(shares), trained.meta, settings) if dist.is_main else None


HINTS = {
    CheckpointError: "`dvc repro train` writes models/model.pt; retrain if it is from another config",
    DataError: "`dvc repro prepare` rewrites data/prepared",
    DatasetNotFoundError: "`dvc repro prepare` writes data/prepared",
    EvaluationError: "no examples: check evaluate.num_images and data.test_size; non-finite values: "
                     "the trained model's outputs are not finite, retrain (`dvc repro train`)",
}


if __name__ == "__main__":
    sys.exit(main())
