"""Figures for reports, built from arrays and report files (never from live models).

Each ``*_figure`` function returns a standalone :class:`matplotlib.figure.Figure` (Agg
canvas), so importing this package changes no global matplotlib state (no ``pyplot``, no
``matplotlib.use``) and a caller can read back what is drawn; :func:`save_figure` writes it
as a PNG atomically. Report files that are malformed raise :class:`ddpm.errors.DataError`;
arrays of the wrong shape are a caller's bug (``ValueError``).

One module per group of figures, so that a stage loads, and DVC makes it depend on, only the
figures it draws: ``grids`` (image grids, the samples figure), ``processes`` (the reverse and
forward process), ``reports`` (training loss, bound terms, quality against NFE), ``schedules``
(beta schedule, SDE kernel and g(t), NCSN's sigma ladder); ``_common`` and ``_scatter`` hold
what they share. The public names below are imported on first use.

Conventions shared with the rest of the package (see DESIGN.md):

- Images live in model space ``[-1, 1]``: grey level ``v in {0..K-1}`` is
  ``x = 2 v / (K - 1) - 1``; arrays are ``[N, C, H, W]`` with ``C`` in ``{1, 3}``.
- Vector data (the Swiss roll) is ``[N, 2]``.
- Timestep labels use the paper's index: ``t = 0`` is data, ``t = T`` is pure noise.
  Code indices ``0..T-1`` (``betas[t]``, ``alphas_cumprod[t]``) stand for paper ``t = 1..T``.
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

_EXPORTS = {
    "DATA_KINDS": "_common",
    "DPI": "_common",
    "save_figure": "_common",
    "GRID_PADDING": "grids",
    "GRID_PAD_VALUE": "grids",
    "images_to_uint8": "grids",
    "save_image_grid": "grids",
    "samples_figure": "grids",
    "MAX_PANELS_PER_ROW": "processes",
    "SAMPLER_TITLES": "processes",
    "forward_process_figure": "processes",
    "reverse_process_figure": "processes",
    "BOUND_UNITS": "reports",
    "bound_terms_figure": "reports",
    "loss_figure": "reports",
    "quality_nfe_figure": "reports",
    "schedule_figure": "schedules",
    "sde_schedule_figure": "schedules",
    "sigma_ladder_figure": "schedules",
}

__all__ = list(_EXPORTS)

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
