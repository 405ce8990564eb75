"""The families (issue 11) wired into training: each family's objective, network and the
settings the train stage derives from the data (NCSNv2's rules), and the DDPM path unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm import seeding
from ddpm.config import ConfigError, Params
from ddpm.diffusion import GaussianDiffusion
from ddpm.factory import build_network, build_objective, data_resolved_params, network_timesteps
from ddpm.ncsn import NoiseConditionalScoreMatching, num_levels_for
from ddpm.sde import VESDE, VPSDE, DenoisingScoreMatching, SubVPSDE
from ddpm.training import batch_draws, train

VECTOR_META = {"kind": "vector", "shape": [2], "num_levels": None}
TINY_MLP = {"model": {"mlp_hidden": 16, "mlp_layers": 2}}


def largest_distance(x: torch.Tensor) -> float:
    """The largest pairwise distance, computed independently of ddpm.ncsn (all pairs at once)."""
    flat = x.reshape(len(x), -1).double()
    return torch.cdist(flat, flat).max().item()


def test_ncsn_ladder_comes_from_the_data_by_ncsnv2s_rules():
    g = torch.Generator().manual_seed(0)
    roll = torch.randn(300, 2, generator=g, dtype=torch.float64) * 3
    p = data_resolved_params(Params.from_dict({"family": "ncsn", "dataset": "swissroll"}), roll)
    assert p.ncsn.sigma_max == pytest.approx(largest_distance(roll), rel=1e-12)
    assert p.ncsn.num_levels == 10  # dimension 2: technique 2 has no answer, NCSN's 10 levels
    images = torch.rand(100, 1, 8, 8, generator=g) * 2 - 1
    q = data_resolved_params(Params.from_dict({"family": "ncsn"}), images)
    assert q.ncsn.sigma_max == pytest.approx(largest_distance(images), rel=1e-6)
    assert q.ncsn.num_levels == num_levels_for(q.ncsn.sigma_max, 0.01, 64) > 10
    assert network_timesteps(q) == q.ncsn.num_levels
    explicit = data_resolved_params(Params.from_dict({"family": "ncsn", "ncsn": {"num_levels": 7, "sigma_max": 5.0}}),
                                    images)
    assert (explicit.ncsn.sigma_max, explicit.ncsn.num_levels) == (5.0, 7)


def test_ve_sigma_max_comes_from_the_data_and_the_other_families_are_untouched():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    ve = data_resolved_params(Params.from_dict({"family": "sde", "sde": {"type": "ve"}, "dataset": "swissroll"}), x)
    assert ve.sde.sigma_max == pytest.approx(largest_distance(x), rel=1e-6)
    for raw in ({"family": "sde"}, {"family": "sde", "sde": {"type": "ve", "sigma_max": 50}}, {}):
        p = Params.from_dict({**raw, "dataset": "swissroll"})
        assert data_resolved_params(p, x) == p


def test_a_sigma_min_above_every_distance_names_the_key():
    x = torch.zeros(4, 2)
    x[0, 0] = 1e-3
    with pytest.raises(ConfigError, match=r"ncsn.sigma_min=0.01 .*largest distance"):
        data_resolved_params(Params.from_dict({"family": "ncsn", "dataset": "swissroll"}), x)


@pytest.mark.parametrize(("raw", "kind", "timesteps"), [
    ({}, GaussianDiffusion, 1000),
    ({"family": "sde"}, DenoisingScoreMatching, 1000),
    ({"family": "sde", "sde": {"type": "subvp", "num_scales": 500}}, DenoisingScoreMatching, 500),
    ({"family": "sde", "sde": {"type": "ve", "sigma_max": 8.0}}, DenoisingScoreMatching, 1000),
    ({"family": "ncsn", "ncsn": {"sigma_max": 8.0, "num_levels": 12}}, NoiseConditionalScoreMatching, 12),
])
def test_each_family_builds_its_objective_and_network(raw, kind, timesteps):
    p = Params.from_dict({**raw, "dataset": "swissroll", **TINY_MLP})
    objective = build_objective(p)
    assert isinstance(objective, kind) and network_timesteps(p) == timesteps
    if isinstance(objective, DenoisingScoreMatching):
        expected = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}[p.sde.type]
        assert type(objective.sde) is expected and objective.sde.N == timesteps
    net = build_network(p, VECTOR_META)
    assert net(torch.zeros(3, 2), torch.tensor([0.0, 0.5 * (timesteps - 1), timesteps - 1.0])).shape == (3, 2)


def test_ddpm_draws_are_the_integer_timesteps_of_the_steps_generator():
    p = Params.from_dict({"timesteps": 50})
    t, noise, _ = batch_draws(p, 7, (2,), 50, torch.device("cpu"))
    g = seeding.generator(p.seed, "train_noise", item=7)
    assert torch.equal(t, torch.randint(0, 50, (p.train.batch_size,), generator=g))
    assert torch.equal(noise, torch.randn((p.train.batch_size, 2), generator=g))


def test_continuous_time_draws_lie_in_eps_to_one():
    p = Params.from_dict({"family": "sde", "dataset": "swissroll", "sde": {"eps": 0.25}})
    t, _, _ = batch_draws(p, 0, (2,), 1000, torch.device("cpu"), build_objective(p))
    assert t.dtype == torch.float64 and bool(((t >= 0.25) & (t < 1)).all())
    assert len(set(t.tolist())) == len(t)  # continuous, not a grid


@pytest.mark.parametrize("raw", [
    {"family": "sde", "sde": {"type": "vp", "weighting": "g2"}},
    {"family": "sde", "sde": {"type": "ve", "sigma_max": 20.0}},
    {"family": "ncsn", "ncsn": {"sigma_max": 20.0, "num_levels": 10}},
])
def test_score_families_train_and_their_loss_falls(raw):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(512, 2, generator=g) * torch.tensor([1.0, 0.2]) + 2.0
    p = Params.from_dict({**raw, "dataset": "swissroll", **TINY_MLP,
                          "train": {"steps": 60, "batch_size": 64, "warmup_steps": 1, "log_every": 20,
                                    "bound_every": 0, "lr": 3e-3}})
    result = train(p, data.numpy(), VECTOR_META, torch.device("cpu"), progress=False)
    losses = [row["loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
