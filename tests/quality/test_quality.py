"""ddpm.quality.suites: the reference and floor draws, the families' keys, floors beside their
metrics, samples put on the data's grid, and the number of network evaluations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.data.scaling import to_model_space
from ddpm.errors import EvaluationError
from ddpm.quality import report
from ddpm.quality import suites as quality


def test_real_reference_draws_disjoint_subsets_of_the_training_split():
    train = np.arange(1000)[:, None]
    reference, draws = quality.real_reference(train, 300, seed=0)
    assert reference.shape == (300, 1) and len(draws) == 2  # 1000 // 300 - 1 draws fit beside the reference
    together = np.concatenate([reference, *draws]).ravel()
    assert len(np.unique(together)) == 900  # disjoint, no repeats
    again, _ = quality.real_reference(train, 300, seed=0)
    other, _ = quality.real_reference(train, 300, seed=1)
    assert np.array_equal(reference, again) and not np.array_equal(reference, other)
    assert len(quality.real_reference(np.arange(5000)[:, None], 100, seed=0)[1]) == 4  # at most max_floor_draws


def test_real_reference_refuses_fewer_than_twice_n_examples_naming_the_sizes():
    with pytest.raises(EvaluationError, match=r"2 x 300 = 600 real training examples.*holds 599.*sample.num_samples"):
        quality.real_reference(np.zeros((599, 2)), 300, seed=0)


def test_floors_are_the_mean_and_spread_of_the_real_draws_scores():
    family = quality.MetricSuite("toy", lambda x, ref: {"gap": float(x.mean() - ref.mean()), "gap_stderr": 0.1})
    draws = [torch.full((4, 1), v) for v in (1.0, 2.0, 6.0)]
    floors = quality.floor_scores([family], draws, torch.zeros(4, 1))
    assert floors == {"gap": 3.0, "gap_std": pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))}
    assert quality.floor_scores([family], draws[:1], torch.zeros(4, 1)) == {"gap": 1.0}  # no spread from one draw


def test_every_metric_is_followed_by_its_floor():
    scores = {"fd_classifier": 3.0, "kid_classifier": 0.2, "kid_classifier_stderr": 0.01}
    floors = {"fd_classifier": 1.0, "fd_classifier_std": 0.3, "kid_classifier": 0.001, "kid_classifier_std": 0.002}
    assert list(report.with_floors(scores, floors).items()) == [
        ("fd_classifier", 3.0), ("fd_classifier_floor", 1.0), ("fd_classifier_floor_std", 0.3),
        ("kid_classifier", 0.2), ("kid_classifier_stderr", 0.01), ("kid_classifier_floor", 0.001),
        ("kid_classifier_floor_std", 0.002),
    ]
    table = report.format_table(report.with_floors(scores, floors))
    assert "kid_classifier" in table and "0.2 +- 0.01" in table and "0.001 +- 0.002" in table and "1 +- 0.3" in table


def test_samples_are_rounded_to_the_data_grid_and_vectors_left_alone():
    meta = {"kind": "image", "num_levels": 17}
    x = torch.linspace(-1.2, 1.2, 97).reshape(1, 1, 97, 1)
    on_grid = quality.on_data_grid(x, meta)
    levels = (on_grid + 1) * 8  # K = 17: level k sits at 2k/16 - 1
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert torch.all((levels.round() - (x.clamp(-1, 1) + 1) * 8).abs() <= 0.5 + 1e-5)
    points = torch.randn(5, 2)
    assert torch.equal(quality.on_data_grid(points, {"kind": "vector", "num_levels": None}), points)
    grey = np.array([[[[0, 16]]]], dtype=np.uint8)
    assert torch.equal(quality.to_model_inputs(grey, meta), torch.as_tensor(to_model_space(grey, 17)).float())


@pytest.mark.parametrize("sampler, steps, nfe", [("ancestral", 0, 1000), ("ancestral", 100, 100), ("ddim", 50, 50),
                                                  ("ddim", 0, 1000), ("ddim", 1000, 1000)])
def test_network_evaluations_per_sample(sampler, steps, nfe):
    assert report.sampler_nfe(sampler, steps, 1000) == nfe
    assert report.setting_name(sampler, nfe) == f"{sampler}_{nfe}"


def test_raw_family_scores_a_shifted_gaussian_far_above_its_floor():
    """Two real draws of N(0, I) score an energy distance of 0 within its error, a draw of
    N(e1, I) far above; on the shifted axis alone it matches the closed form
    2 E|N(1, 2)| - 2 E|N(0, 2)| within its standard error."""
    g = torch.Generator().manual_seed(0)
    reference, real, shifted = (torch.randn(600, 2, generator=g, dtype=torch.float64) for _ in range(3))
    shifted[:, 0] += 1.0
    family = quality.raw_suite(seed=0)
    floor = family.score(real, reference)
    model = family.score(shifted, reference)
    assert abs(floor["energy_distance"]) < 4 * floor["energy_distance_stderr"]
    assert model["energy_distance"] > floor["energy_distance"] + 4 * model["energy_distance_stderr"]
    # The shifted axis alone: E|N(m, s^2)| = s sqrt(2/pi) exp(-m^2 / 2s^2) + m erf(m / (s sqrt 2)).
    s = math.sqrt(2)
    e_abs = s * math.sqrt(2 / math.pi) * math.exp(-1 / (2 * s * s)) + math.erf(1 / (s * math.sqrt(2)))
    closed = 2 * e_abs - 2 * s * math.sqrt(2 / math.pi)
    one_d = quality.raw_suite(seed=0).score(shifted[:, :1], reference[:, :1])
    assert abs(one_d["energy_distance"] - closed) < 4 * one_d["energy_distance_stderr"]
    assert set(model) == {"energy_distance", "energy_distance_stderr", "sliced_wasserstein",
                          "sliced_wasserstein_stderr"}
