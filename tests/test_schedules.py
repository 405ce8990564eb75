"""Every beta schedule against its published formula, written here independently."""

import math

import numpy as np
import pytest
import torch

from ddpm.schedules import SCHEDULES, get_beta_schedule

T_VALUES = [1, 10, 1000]
BS, BE = 1e-4, 0.02


def reference(name: str, T: int) -> np.ndarray:
    i = np.arange(T, dtype=np.float64)
    frac = i / (T - 1) if T > 1 else np.zeros(1)
    if name == "linear":
        return BS + (BE - BS) * frac
    if name == "quadratic":
        return (math.sqrt(BS) + (math.sqrt(BE) - math.sqrt(BS)) * frac) ** 2
    if name == "cosine":
        # Nichol & Dhariwal eq. 17 written as abar directly, betas from consecutive ratios.
        abar = [math.cos(((k / T) + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
                for k in range(T + 1)]
        return np.array([min(1 - abar[k + 1] / abar[k], 0.999) for k in range(T)])
    if name == "sigmoid":
        u = -6 + 12 * frac if T > 1 else np.array([-6.0])
        return BS + (BE - BS) / (1 + np.exp(-u))
    if name == "geometric":
        return BS * (BE / BS) ** frac
    if name == "constant":
        return np.full(T, BE)
    if name == "jsd":
        return np.array([1.0 / (T - k) for k in range(T)])
    if name == "sohl_dickstein":
        # Diffusion-Probabilistic-Models' generate_beta_arr with the perturbation at zero:
        # sigmoid(logit(b)) = b for the baseline b_k = 1 / linspace(T, 2, T)[k], then
        # min_beta + b (1 - min_beta - 1e-5), min_beta = 1e-6 (+ step1_beta = 1e-3 at the first step).
        baseline = [1.0 / (T - k * (T - 2) / (T - 1)) for k in range(T)] if T > 1 else [1.0]
        floor = [1e-6 + (1e-3 if k == 0 else 0.0) for k in range(T)]
        return np.array([f + b * (1 - f - 1e-5) for f, b in zip(floor, baseline, strict=True)])
    raise AssertionError(name)


@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_matches_published_formula(name, T):
    betas = get_beta_schedule(name, T, beta_start=BS, beta_end=BE)
    assert betas.dtype == torch.float64
    assert betas.shape == (T,)
    np.testing.assert_allclose(betas.numpy(), reference(name, T), rtol=1e-12, atol=0)


@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_is_a_valid_diffusion(name, T):
    betas = get_beta_schedule(name, T)
    assert bool((betas > 0).all())
    if name == "jsd":
        # Only jsd reaches beta = 1, and only at its last step.
        assert betas[-1] == 1.0
        assert bool((betas[:-1] < 1).all())
    else:
        assert bool((betas < 1).all())
    abar = np.cumprod(1 - betas.numpy())
    assert np.all(np.diff(abar) < 0)


def test_default_is_ddpm_linear():
    betas = get_beta_schedule("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4, abs=0)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-18)


def test_cosine_endpoint_is_capped():
    betas = get_beta_schedule("cosine", 1000)
    assert betas[-1].item() == 0.999
    # Cosine abar is close to the closed form where the cap does not act.
    abar = torch.cumprod(1 - betas, 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert abar[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-12)


def test_unknown_schedule_lists_accepted_names():
    with pytest.raises(ValueError) as err:
        get_beta_schedule("cosinus", 10)
    msg = str(err.value)
    assert "cosinus" in msg
    for name in SCHEDULES:
        assert name in msg


@pytest.mark.parametrize("kwargs, fragment", [
    ({"timesteps": 0}, "timesteps=0"),
    ({"timesteps": 2.5}, "timesteps=2.5"),
    ({"timesteps": 10, "beta_start": 0.0}, "beta_start=0.0"),
    ({"timesteps": 10, "beta_end": 1.5}, "beta_end=1.5"),
])
def test_bad_arguments_name_the_key(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        get_beta_schedule("linear", **kwargs)
