"""The experiment's view in MLflow's UI: its kind, the saved view of the runs table (columns,
image cards) and each run's description. Only the plot stage, the last, imports it and sets
them, so editing a column reruns that stage alone (dvc.yaml), not train, sample and evaluate.

The saved view (MLflow's "Views" menu, opened by ``tracking.compare_view_url``) holds the numbers
runs are judged by and the swept params side by side (``HEADLINE_METRICS``, ``COMPARE_PARAMS``,
``MORE_METRICS``), lowest bound first, and the sample images first in its chart view. A run's
description has its numbers and links to its images.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ddpm.pipeline.tracking import COMPARE_VIEW_ID, TRAINED_BY_TAG, Tracker, one_line

# MLflow's own names (its UI reads them).
KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # one experiment tag per saved view of the runs table
COMPARE_VIEW_NAME = "ddpm: compare runs"
SAMPLES_ARTIFACTS = "samples"  # the artifact folder whose images a run's description links
# The sample stage's MLflow images (``Tracker.log_image``: key ``samples/<file stem>``), which the
# chart view of the comparison view shows first, side by side across runs.
SAMPLE_IMAGE_KEYS = ("samples/grid", "samples/reverse_process")
# The runs table of the comparison view, in this order: the bound and each metric family's main
# distance, the params experiments sweep, the other sample-quality metrics. A metric no run has
# shows no column.
HEADLINE_METRICS = ("bpd", "bpd_stderr", "nll", "nll_stderr", "ode_bpd", "ode_bpd_stderr", "ode_nll",
                    "ode_nll_stderr", "fd_classifier", "kid_classifier", "fid", "energy_distance")
COMPARE_PARAMS = ("family", "beta_schedule", "timesteps", "mean_type", "var_type", "loss_type", "sde.type",
                  "sample.sampler", "sample.steps", "train.steps", "train.lr")
MORE_METRICS = ("ode_bpd_nfe", "ode_nll_nfe", "sample_nfe", "precision_classifier", "recall_classifier",
                "density_classifier", "coverage_classifier", "classes_covered", "kid_inception", "inception_score",
                "sliced_wasserstein")
UNITS = {"bpd": "bits/dim", "nll": "nats/dim", "ode_bpd": "bits/dim", "ode_nll": "nats/dim"}


def sample_image_cards() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chart view's cards and sections for the sample images, as MLflow's UI (3.x) stores
    them in a view: one image card per key of ``SAMPLE_IMAGE_KEYS`` in a ``samples`` section.

    Without them the UI makes its own image cards, which open on a list of every param of each
    run (about a hundred here) above the image, so at the card's default size the grid is below
    the fold: ``showRunParams: false`` leaves each run's name and its image. A card of the UI's
    default three per row holds one run's grid, the others below it inside the card; the section
    has one card per row (``columns: 1``), wide enough for the grids of several runs side by side
    at the default card height (seen in headless Chromium at 1600 px: three runs, two clones).
    The UI adds its own cards for every other metric and image key after these, and keeps this
    section first (``isAccordionReordered`` in ``compare_view_state``)."""
    section = "ddpm-samples"
    cards = [{"uuid": f"ddpm-{key.replace('/', '-')}", "type": "IMAGE", "runsCountToCompare": 10,
              "metricSectionId": section, "deleted": False, "isGenerated": True, "imageKeys": [key], "step": 0,
              "showRunParams": False} for key in SAMPLE_IMAGE_KEYS]
    sections = [{"uuid": section, "name": SAMPLES_ARTIFACTS, "display": True, "isReordered": False,
                 "deleted": False, "isGenerated": True, "columns": 1}]
    return cards, sections


def compare_view_state() -> dict[str, Any]:
    """The comparison view as MLflow's UI stores a view of the runs table: its search (every
    active run, lowest bound first), its columns (``params.`name```, ``metrics.`name```) and,
    for its chart view, the sample images first (``sample_image_cards``); the UI makes a chart
    for every other metric."""
    columns = ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in HEADLINE_METRICS),
               *(f"params.`{p}`" for p in COMPARE_PARAMS), *(f"metrics.`{m}`" for m in MORE_METRICS)]
    # Wide enough for the column's name (the UI's default cuts most of them); the dataset's
    # name, digest and split.
    widths = {c: max(90, 28 + 7 * len(c.split("`")[1])) for c in columns} | {"attributes.`Dataset`": 230}
    cards, sections = sample_image_cards()
    # What differs from the UI's defaults (which fill in the rest: every active run, all time).
    return {"orderByKey": "metrics.`bpd`", "orderByAsc": True,
            "selectedColumns": columns, "columnOrder": columns, "columnWidths": widths,
            "compareRunCharts": cards, "compareRunSections": sections, "isAccordionReordered": True}


def compare_view_tag() -> str:
    """The value of the view's experiment tag: MLflow's saved-view record (name, times, state)."""
    now_ms = int(time.time() * 1000)
    return json.dumps({"name": COMPARE_VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": json.dumps(compare_view_state())})


def saved_view_state(tag_value: str | None) -> dict[str, Any] | None:
    """The state of a saved view's tag value, None when there is none or it is not one."""
    try:
        return json.loads(json.loads(tag_value)["state"])
    except (TypeError, KeyError, ValueError):
        return None


def run_url(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A link to a run's page (or one of its artifacts) relative to the UI's address, in the
    model-training pages (see ``tracking.compare_view_url``)."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    return page + "?workflowType=machine_learning"


def _with_error(value: float, error: float | None) -> str:
    return f"{value:.4g} ± {error:.2g}" if error is not None else f"{value:.4g}"


def describe_run(metrics: dict[str, float], params: dict[str, str], links: dict[str, str]) -> str:
    """A run's description (markdown, shown on its page, whose first lines show before "Show
    more"): the bound; the sampler and ``links`` (label -> URL: the sample grid, the run that
    trained the model); a table of the sample-quality metrics that have a floor: each value
    (± ``<name>_stderr``) next to ``<name>_floor`` (± its spread over real draws, ``<name>_floor_std``)."""
    lines = [f"**{_with_error(metrics[m], metrics.get(f'{m}_stderr'))} {unit}** "
             f"({'probability-flow ODE likelihood' if m.startswith('ode') else 'test bound'})"
             for m, unit in UNITS.items() if m in metrics]
    sampling = []
    if "sample.sampler" in params:
        steps = params.get("sample.steps", "0")
        sampling.append(f"Sampler: {params['sample.sampler']}, {'all' if steps == '0' else steps} steps")
    sampling += [f"[{label}]({url})" for label, url in links.items()]
    if sampling:
        lines.append(" · ".join(sampling))
    rank = {name: i for i, name in enumerate(HEADLINE_METRICS + MORE_METRICS)}
    scored = sorted((k for k in metrics if f"{k}_floor" in metrics), key=lambda k: (rank.get(k, len(rank)), k))
    if scored:
        lines += ["", "| sample quality | value | floor (real vs real) |", "| --- | --- | --- |"]
        lines += [f"| {k} | {_with_error(metrics[k], metrics.get(f'{k}_stderr'))} | "
                  f"{_with_error(metrics[f'{k}_floor'], metrics.get(f'{k}_floor_std'))} |" for k in scored]
    if "classifier_test_accuracy" in metrics:
        lines.append(f"\nClassifier test accuracy: {metrics['classifier_test_accuracy']:.4g}")
    return "\n".join(lines).strip()


def experiment_tags(current: dict[str, str]) -> dict[str, str]:
    """The experiment tags to set, given the ``current`` ones: the model-training kind where the
    experiment has no kind (a kind the user chose stays), and the comparison view where it is
    missing or differs from this code's (the view belongs to the code: a user's own layout is
    saved under another name)."""
    tags = {}
    if KIND_TAG not in current:
        # For MLflow 3 UIs that choose an experiment's pages by its kind; 3.17's UI ignores it and
        # follows a switch in the browser instead (see tracking.compare_view_url).
        tags[KIND_TAG] = MODEL_TRAINING
    view = VIEW_TAG_PREFIX + COMPARE_VIEW_ID
    if saved_view_state(current.get(view)) != compare_view_state():
        tags[view] = compare_view_tag()
    return tags


def set_experiment_view(tracker: Tracker) -> None:
    """Set ``experiment_tags`` on the experiment of ``tracker``'s run. Only how the UI shows it: a
    store that refuses (no permission) gets a note, and the stage goes on."""
    client, exp_id = tracker.client, tracker.experiment_id
    try:
        for key, value in experiment_tags(client.get_experiment(exp_id).tags).items():
            client.set_experiment_tag(exp_id, key, value)
    except Exception as err:
        print(f"mlflow: could not set the experiment's view tags ({one_line(err)}); the runs are "
              f"tracked all the same", file=sys.stderr)


def describe(tracker: Tracker) -> None:
    """Write the description (``describe_run``) of ``tracker``'s run from what the run holds now."""
    tracker.safely("writing the run's description", _describe, tracker.client, tracker.run_id)


def _describe(client: Any, run_id: str) -> None:
    run = client.get_run(run_id)
    exp_id = run.info.experiment_id
    links = {f.path: run_url(exp_id, run_id, f.path)
             for f in client.list_artifacts(run_id, SAMPLES_ARTIFACTS) if f.path.endswith(".png")}
    trained = run.data.tags.get(TRAINED_BY_TAG)
    if trained:
        links["the run that trained the model"] = run_url(exp_id, trained)
    text = describe_run(run.data.metrics, run.data.params, links)
    if trained:
        text += "\n\nThe model was reused from DVC's cache (trained by the run linked above)."
    client.set_tag(run_id, NOTE_TAG, text)
