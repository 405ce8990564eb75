"""Figures of the stages' report files (CSV): the training loss, the variational bound per
timestep and sample quality against NFE. A malformed report raises
:class:`ddpm.errors.DataError`, so the stage names the file to regenerate."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ddpm.errors import DataError
from ddpm.plotting._common import DPI, REFERENCE_COLOR, SAMPLE_COLOR, PathLike

DECODER_COLOR = "tab:red"
BOUND_UNITS = ("bits/dim", "nats/dim")
QUALITY_ID_COLUMNS = ("setting", "sampler", "nfe")


def _read_csv_columns(csv_path: PathLike, required: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the ``required`` numeric columns of a CSV with a header line (blank cells -> NaN).

    A report file that is malformed (edited by hand, or not a report) raises ``DataError``.
    """
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {missing}; header is {header}, expected at least {list(required)}"
            )
        reader.fieldnames = header
        rows = [(line_no, row) for line_no, row in enumerate(reader, start=2)]
    if not rows:
        raise DataError(f"{csv_path}: no data rows after the header")
    return {c: np.array([_csv_number(csv_path, line_no, c, row.get(c)) for line_no, row in rows]) for c in required}


def _csv_number(csv_path: PathLike, line_no: int, column: str, cell: str | None) -> float:
    cell = (cell or "").strip()
    try:
        return float(cell) if cell else math.nan
    except ValueError:
        raise DataError(f"{csv_path}:{line_no}: column {column!r} has non-numeric value {cell!r}") from None


def _ema(values: np.ndarray, span: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    beta = 1.0 - 2.0 / (span + 1.0)
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = beta * acc + (1.0 - beta) * v
        weight = beta * weight + (1.0 - beta)
        out[i] = acc / weight
    return out


def _curve_figure(width_in: float, height_in: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def loss_figure(csv_path: PathLike, ylabel: str = "training loss (batch mean)") -> Figure:
    """The training loss curve from a CSV with a header and ``step``, ``loss`` columns.

    Other columns (learning rate, grad norm, ...) are ignored. The raw per-step loss is
    drawn faintly, with a bias-corrected EMA on top (span ~ 1/40 of the points, so the
    smoothing adapts to the run length); non-finite losses are dropped and counted in
    the title. The y axis is logarithmic when the positive losses span more than a decade.

    Args:
        csv_path: training log, e.g. ``reports/train/loss.csv``.
        ylabel: y-axis label (name the loss and its unit when known).
    """
    cols = _read_csv_columns(csv_path, ["step", "loss"])
    finite = np.isfinite(cols["step"]) & np.isfinite(cols["loss"])
    if not np.any(finite):
        raise DataError(f"{csv_path}: no finite (step, loss) rows to plot")
    order = np.argsort(cols["step"][finite], kind="stable")
    step, loss = cols["step"][finite][order], cols["loss"][finite][order]
    span = float(np.clip(len(loss) / 40.0, 1.0, 500.0))

    fig, ax = _curve_figure(7.0, 4.2)
    if span >= 2.0:
        smooth = _ema(loss, span)
        ax.plot(step, loss, color=SAMPLE_COLOR, alpha=0.3, linewidth=0.8, label="per step")
        ax.plot(step, smooth, color=SAMPLE_COLOR, linewidth=2.0, label=f"EMA (span {span:.0f} points)")
        final = f"final EMA {smooth[-1]:.4g}"
    else:  # too few points to smooth: show them as they are
        ax.plot(step, loss, color=SAMPLE_COLOR, marker="o", markersize=3, linewidth=1.5, label="per step")
        final = f"final {loss[-1]:.4g}"
    if np.all(loss > 0) and loss.max() / loss.min() > 10.0:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    dropped = int(np.sum(~finite))
    omitted = f"\n{dropped} non-finite value(s) omitted" if dropped else ""
    ax.set_title(f"Training loss ({len(loss)} points, {final}){omitted}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper right")
    return fig


def _read_bound_terms(csv_path: PathLike) -> dict[str, np.ndarray]:
    """The bound CSV's rows sorted by ``t``; ``se`` is the standard error with blanks as 0,
    ``has_se`` says where one was given."""
    cols = _read_csv_columns(csv_path, ["t", "term", "stderr"])
    order = np.argsort(cols["t"], kind="stable")
    t, term, stderr = cols["t"][order], cols["term"][order], cols["stderr"][order]
    return {"t": t, "term": term, "se": np.nan_to_num(stderr, nan=0.0), "has_se": np.isfinite(stderr)}


def _draw_kl_terms(ax: Axes, t: np.ndarray, kl: np.ndarray, se: np.ndarray, floor: float) -> None:
    """The KL terms ``L_{t-1}`` (paper ``t >= 2``) as a line with a +-1 standard-error band."""
    ax.plot(
        t,
        kl,
        color=SAMPLE_COLOR,
        marker="o" if len(t) <= 60 else None,
        markersize=3,
        linewidth=1.5,
        label=r"$L_{t-1}$ (KL terms, $t \geq 2$)",
    )
    if np.any(se > 0):
        ax.fill_between(
            t,
            np.maximum(kl - se, floor),
            kl + se,
            color=SAMPLE_COLOR,
            alpha=0.25,
            linewidth=0,
            label=r"$\pm 1$ std. error",
        )


def _draw_decoder_term(ax: Axes, l0: float, se: float, has_se: bool, floor: float) -> None:
    """``L_0`` at ``t = 1``: a marker with error bar, or pinned to the bottom edge when it is
    not positive (a Gaussian log-density can exceed 0) and so cannot sit on a log axis."""
    label = rf"$L_0$ (decoder, $t=1$) = {l0:.4g}" + (rf" $\pm$ {se:.2g}" if has_se else "")
    if l0 > 0:
        ax.errorbar(
            [1],
            [l0],
            yerr=[[min(se, l0 - floor)], [se]],
            fmt="D",
            color=DECODER_COLOR,
            markersize=7,
            capsize=3,
            label=label,
        )
    else:
        ax.plot(
            [1],
            [floor],
            marker="v",
            color=DECODER_COLOR,
            markersize=10,
            linestyle="none",
            clip_on=False,
            zorder=5,
            label=label + " (off scale)",
        )


def bound_terms_figure(csv_path: PathLike, unit: str) -> Figure:
    """The per-timestep terms of the variational bound (Ho et al. eq. 5).

    The CSV has header ``t,term,stderr`` with ``t = 1..T`` the paper's index: ``t = 1`` is
    the decoder term ``L_0`` and ``t >= 2`` the KL term ``L_{t-1}``; ``term`` is the mean
    contribution to the bound per dimension in ``unit`` and ``stderr`` its standard error
    (blank or NaN: no band). The prior term ``L_T`` is not part of this file.

    The KL terms are drawn as they are in the file on a log axis with a shaded +-1
    standard-error band; ``L_0`` is a separate red marker (see :func:`_draw_decoder_term`),
    its value and error in the legend. The legend title gives the sum of all rows.

    Args:
        csv_path: per-timestep terms written by the evaluate stage.
        unit: ``"bits/dim"`` (discrete data) or ``"nats/dim"`` (continuous data).
    """
    if unit not in BOUND_UNITS:
        raise ValueError(f"unit must be one of {BOUND_UNITS}, got {unit!r}")
    rows = _read_bound_terms(csv_path)
    t, term, se = rows["t"], rows["term"], rows["se"]
    is_decoder = t == 1
    shown = ~is_decoder & np.isfinite(term) & (term > 0)
    on_axis = shown | (is_decoder & np.isfinite(term) & (term > 0))
    if not np.any(on_axis):
        raise DataError(f"{csv_path}: no positive finite term to draw on a log axis")
    floor, ceiling = float(term[on_axis].min()) / 3.0, float((term + se)[on_axis].max()) * 2.0

    fig, ax = _curve_figure(7.5, 4.6)
    ax.set_yscale("log")
    if np.any(shown):
        _draw_kl_terms(ax, t[shown], term[shown], se[shown], floor)
    if np.any(is_decoder):
        first = np.flatnonzero(is_decoder)[0]
        _draw_decoder_term(ax, float(term[first]), float(se[first]), bool(rows["has_se"][first]), floor)
    ax.set_ylim(floor, ceiling)
    t_max = max(float(np.nanmax(t)), 2.0)
    margin = max(0.5, 0.015 * t_max)
    ax.set_xlim(1 - margin, t_max + margin)
    legend_title = f"sum of all {len(t)} terms = {float(np.nansum(term)):.4g} {unit}\n(prior $L_T$ not included)"
    skipped = int(np.sum(~is_decoder & ~shown))
    if skipped:
        legend_title += f"\n{skipped} non-positive KL term(s) not drawn"
    ax.legend(loc="best", fontsize=8, title=legend_title, title_fontsize=8, framealpha=0.9)
    ax.set_xlabel(r"timestep $t$ (paper index; $t=1$ is the decoder $L_0$)")
    ax.set_ylabel(f"mean term per dimension ({unit})")
    ax.set_title(f"Variational bound per timestep ({unit})")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.08)
    return fig


def _read_quality_rows(csv_path: PathLike) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """The quality stage's nfe.csv: (metric names, sampler of each row, numeric columns)."""
    with open(csv_path, newline="") as f:
        header = [h.strip() for h in (next(csv.reader(f), None) or [])]
    missing = [c for c in QUALITY_ID_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; header is {header}")
    numeric = [c for c in header if c not in ("setting", "sampler")]
    cols = _read_csv_columns(csv_path, numeric)
    with open(csv_path, newline="") as f:
        samplers = [row["sampler"].strip() for row in csv.DictReader(f)]
    names = [c for c in numeric if c != "nfe" and not c.endswith("_stderr")]
    if not names:
        raise DataError(f"{csv_path}: no metric columns besides {list(QUALITY_ID_COLUMNS)}")
    return names, samplers, cols


def quality_nfe_figure(csv_path: PathLike, floors: Mapping[str, float]) -> Figure:
    """Each sample-quality metric against the network evaluations per sample (NFE, log
    axis), one panel per metric and one line per sampler, with standard errors where the
    metric has one, and its floor (the same metric between two draws of real data of the
    same size: what a perfect model scores) as a dashed line.

    Args:
        csv_path: the quality stage's table, e.g. ``reports/quality/nfe.csv``
            (columns ``setting``, ``sampler``, ``nfe``, one per metric, ``<metric>_stderr``).
        floors: ``<metric>_floor`` values (a metric without one is drawn without a floor).
    """
    names, samplers, cols = _read_quality_rows(csv_path)
    n_cols = min(len(names), 3)
    n_rows = math.ceil(len(names) / n_cols)
    fig = Figure(figsize=(4.0 * n_cols, 3.0 * n_rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    nfe = cols["nfe"]
    for ax, name in zip(axes, names, strict=False):
        for sampler in dict.fromkeys(samplers):
            rows = np.array([s == sampler for s in samplers])
            order = np.argsort(nfe[rows])
            err = cols.get(f"{name}_stderr")
            ax.errorbar(
                nfe[rows][order],
                cols[name][rows][order],
                yerr=None if err is None else err[rows][order],
                marker="o",
                markersize=4,
                capsize=3,
                label=sampler,
            )
        floor = floors.get(f"{name}_floor")
        if floor is not None:
            ax.axhline(floor, color=REFERENCE_COLOR, linestyle="--", label="floor (real vs real)")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle("Sample quality against sampling cost")
    return fig
