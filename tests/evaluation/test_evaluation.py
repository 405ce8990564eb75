"""The evaluate stage's computation: batch- and split-independence, the report's parts, and
its refusal to report a NaN."""

import math

import numpy as np
import pytest
import torch
from test_diffusion import discrete_oracle

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import EvaluationError
from ddpm.evaluation.bound import bound_per_example, evaluation_inputs, merge_parts, summarize_bound
from ddpm.schedules import get_beta_schedule
from ddpm.seeding import generators

META = {"kind": "image", "shape": [1, 2, 2], "num_levels": 17}


def setup():
    betas = get_beta_schedule("linear", 100)
    levels = 2 * torch.arange(17, dtype=torch.float64) / 16 - 1
    pmf = torch.full((17,), 1 / 17, dtype=torch.float64)
    oracle = discrete_oracle(betas, levels, pmf)
    model = lambda x, t: oracle(x.double(), t).float()
    test = np.random.default_rng(0).integers(0, 17, size=(10, 1, 2, 2), dtype=np.uint8)
    return GaussianDiffusion(betas), model, evaluation_inputs(test, META)


def test_split_over_ranks_and_batch_size_do_not_change_the_numbers():
    d, model, x = setup()
    whole = bound_per_example(d, model, x, META, batch_size=10)
    shares = [bound_per_example(d, model, x, META, indices=range(r, 10, 3), batch_size=2)
              for r in range(3)]
    merged = merge_parts(shares)
    for key in ("total", "prior", "decoder", "terms"):
        torch.testing.assert_close(merged[key], whole[key], rtol=1e-6, atol=1e-9)


def test_report_parts_add_up_and_stderr_is_the_standard_error():
    d, model, x = setup()
    parts = bound_per_example(d, model, x, META)
    report = summarize_bound(parts, META, clip_denoised=True)
    b = report["bpd"]
    assert report["unit"] == "bits/dim" and report["num_images"] == 10
    assert b["total"] == pytest.approx(b["prior"] + b["decoder"] + b["kl_terms"], rel=1e-12)
    assert b["stderr"] == pytest.approx(np.std(parts["total"].numpy(), ddof=1) / math.sqrt(10))
    assert [row[0] for row in report["terms_rows"]] == list(range(1, 101))


def test_a_nan_bound_is_refused():
    d, model, x = setup()
    nan_model = lambda x_t, t: torch.where(t[:, None, None, None] == 3, torch.nan, model(x_t, t))
    parts = bound_per_example(d, nan_model, x, META)
    with pytest.raises(EvaluationError, match="NaN or infinite values.*refusing"):
        summarize_bound(parts, META, clip_denoised=True)


def test_no_examples_is_an_evaluation_error():
    d, model, x = setup()
    parts = bound_per_example(d, model, x, META, indices=[])
    with pytest.raises(EvaluationError, match="no test examples"):
        summarize_bound(parts, META, clip_denoised=True)


def test_bound_noise_is_the_bound_stream_and_progress_reaches_the_end():
    """Example i's x_t draws are item i of the run's "bound" stream (not the sampler's), and
    on_step counts every timestep of every batch, ending at (total, total)."""
    d, model, x = setup()
    seen = []
    parts = bound_per_example(d, model, x, META, indices=[2, 5, 7], batch_size=2, seed=3,
                              on_step=lambda done, total: seen.append((done, total)))
    direct = d.bpd(model, x[[2, 5, 7]], num_levels=17, generator=generators(3, "bound", [2, 5, 7]))
    torch.testing.assert_close(parts["terms"], direct["terms"], rtol=1e-6, atol=1e-9)
    other = d.bpd(model, x[[2, 5, 7]], num_levels=17, generator=generators(3, "sample", [2, 5, 7]))
    assert (other["terms"][:, 1:] - parts["terms"][:, 1:]).abs().max() > 1e-3
    assert seen[-1] == (200, 200) and all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_bound_curve_point_estimates_the_full_bound_with_its_standard_error():
    """Many examples: the stratified estimate and the full bound agree within 4 combined
    standard errors, and its standard error is the one of its per-example values."""
    from ddpm.evaluation.bound import bound_curve_point

    diffusion, model, _ = setup()
    test = np.random.default_rng(1).integers(0, 17, size=(400, 1, 2, 2), dtype=np.uint8)
    x = evaluation_inputs(test, META)
    point = bound_curve_point(diffusion, model, x, META, strata=5, seed=0)
    full = summarize_bound(bound_per_example(diffusion, model, x, META, seed=0), META, True)["bpd"]
    se = math.hypot(point["bpd_estimate_stderr"], full["stderr"])
    assert abs(point["bpd_estimate"] - full["total"]) < 4 * se
    assert point["bpd_estimate_stderr"] > full["stderr"]  # fewer timesteps: a noisier estimate
    vectors = bound_curve_point(GaussianDiffusion(get_beta_schedule("linear", 10)), lambda x_t, t: 0 * x_t,
                                torch.randn(8, 2), {"kind": "vector", "shape": [2], "num_levels": None}, strata=2)
    assert set(vectors) == {"nll_estimate", "nll_estimate_stderr"}
