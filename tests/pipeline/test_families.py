"""The families (ddpm, sde, ncsn) wired into training: each family's objective, network and the
settings the train stage derives from the data (NCSNv2's rules), and the DDPM path unchanged."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
import yaml

from ddpm import seeding
from ddpm.config import ConfigError, Params
from ddpm.diffusion import GaussianDiffusion
from ddpm.pipeline.build import (
    TrainedModel,
    build_network,
    build_objective,
    data_resolved_params,
    network_timesteps,
    score_sampler,
    score_sampler_settings,
)
from ddpm.sampling.score_samplers import draw_score_samples
from ddpm.score.ncsn import NoiseConditionalScoreMatching, num_levels_for
from ddpm.score.sde import VESDE, VPSDE, DenoisingScoreMatching, SubVPSDE
from ddpm.training.loop import batch_draws, train
from ddpm.training.objectives import DiffusionObjective

VECTOR_META = {"kind": "vector", "shape": [2], "num_levels": None}
TINY_MLP = {"model": {"mlp_hidden": 16, "mlp_layers": 2}}


def largest_distance(x: torch.Tensor) -> float:
    """The largest pairwise distance, computed independently of ddpm.score.ncsn (all pairs at once)."""
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
    assert q.ncsn.sigma_min == 0.02 and q.ncsn.num_levels == num_levels_for(q.ncsn.sigma_max, 0.02, 64) > 10
    assert network_timesteps(q) == q.ncsn.num_levels
    explicit = data_resolved_params(Params.from_dict({"family": "ncsn", "ncsn": {"num_levels": 7, "sigma_max": 5.0}}),
                                    images)
    assert (explicit.ncsn.sigma_max, explicit.ncsn.num_levels) == (5.0, 7)


def test_ve_sigma_max_comes_from_the_data_and_the_other_families_are_untouched():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    ve = data_resolved_params(Params.from_dict({"family": "sde", "sde": {"type": "ve"}, "dataset": "swissroll"}), x)
    assert ve.sde.sigma_max == pytest.approx(largest_distance(x), rel=1e-6)
    for raw in ({"family": "sde"}, {"family": "sde", "sde": {"type": "ve", "sigma_max": 50}}, {}):
        p = Params.from_dict({**raw, "dataset": "swissroll", "train": {"batch_size": 50}})
        assert data_resolved_params(p, x) == p


def test_a_sigma_min_above_every_distance_names_the_key():
    x = torch.zeros(4, 2)
    x[0, 0] = 1e-3
    with pytest.raises(ConfigError, match=r"ncsn.sigma_min=0.02 .*largest distance"):
        data_resolved_params(Params.from_dict({"family": "ncsn", "dataset": "swissroll"}), x)


@pytest.mark.parametrize(("raw", "kind", "timesteps"), [
    ({}, DiffusionObjective, 1000),
    ({"family": "sde"}, DenoisingScoreMatching, 1000),
    ({"family": "sde", "sde": {"type": "subvp", "num_scales": 500}}, DenoisingScoreMatching, 500),
    ({"family": "sde", "sde": {"type": "ve", "sigma_max": 8.0}}, DenoisingScoreMatching, 1000),
    ({"family": "ncsn", "ncsn": {"sigma_max": 8.0, "num_levels": 12}}, NoiseConditionalScoreMatching, 12),
])
def test_each_family_builds_its_objective_and_network(raw, kind, timesteps):
    p = Params.from_dict({**raw, "dataset": "swissroll", **TINY_MLP})
    objective = build_objective(p)
    assert isinstance(objective, kind) and network_timesteps(p) == timesteps
    if isinstance(objective, DiffusionObjective):
        assert isinstance(objective.diffusion, GaussianDiffusion) and objective.diffusion.num_timesteps == timesteps
    if isinstance(objective, DenoisingScoreMatching):
        expected = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}[p.sde.type]
        assert type(objective.sde) is expected and objective.sde.N == timesteps
    net = build_network(p, VECTOR_META)
    assert net(torch.zeros(3, 2), torch.tensor([0.0, 0.5 * (timesteps - 1), timesteps - 1.0])).shape == (3, 2)


def test_ddpm_draws_are_the_integer_timesteps_of_the_steps_generator():
    p = Params.from_dict({"timesteps": 50, "train": {"batch_size": 128}})  # the train stage resolves auto
    t, noise, _ = batch_draws(p, 7, (2,), torch.device("cpu"), build_objective(p))
    g = seeding.generator(p.seed, "train_noise", item=7)
    assert torch.equal(t, torch.randint(0, 50, (p.train.batch_size,), generator=g))
    assert torch.equal(noise, torch.randn((p.train.batch_size, 2), generator=g))


def test_continuous_time_draws_lie_in_eps_to_one():
    p = Params.from_dict({"family": "sde", "dataset": "swissroll", "sde": {"eps": 0.25}, "train": {"batch_size": 256}})
    t, _, _ = batch_draws(p, 0, (2,), torch.device("cpu"), build_objective(p))
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


# ---------------------------------------------------------------------- sampling (score samplers)
SWISSROLL_TINY = {"dataset": "swissroll", "data.swissroll_train_size": 400, "data.test_size": 40,
                  "model.mlp_hidden": 16, "model.mlp_layers": 2, "train.steps": 3, "train.batch_size": 32,
                  "train.bound_every": 0, "sample.num_samples": 6, "sample.batch_size": 4,
                  "sample.trajectory_frames": 4}


def run_stages(root, **overrides) -> dict:
    """prepare, train and sample in-process as DVC runs them; the sample stage's outputs."""
    from test_stages import write_params

    from stages import prepare, sample, train

    params = write_params(root / "params.yaml", **{**SWISSROLL_TINY, **overrides})
    p = ["--params", str(params)]
    if not (root / "prep").exists():
        assert prepare.main([*p, "--raw", str(root / "raw"), "--out", str(root / "prep")]) == 0
    assert train.main([*p, "--data", str(root / "prep"), "--out", str(root / "models"),
                       "--state", str(root / "ckpt" / "state.pt"), "--reports", str(root / "rep")]) == 0
    assert sample.main([*p, "--model", str(root / "models" / "model.pt"), "--out", str(root / "samples")]) == 0
    with np.load(root / "samples" / "samples.npz") as npz:
        out = {k: npz[k] for k in npz.files}
    out["sampling"] = json.loads((root / "samples" / "sampling.json").read_text())
    return out


@pytest.mark.parametrize(("overrides", "nfe"), [
    ({"family": "sde", "sde.type": "subvp", "sample.steps": 30}, 30),  # Euler-Maruyama alone
    ({"family": "sde", "sde.type": "ve", "sample.steps": 30}, 60),      # reverse diffusion + annealed Langevin
    ({"family": "ncsn", "ncsn.steps_per_level": 3}, 10 * 3 + 1),        # 10 levels (dimension 2), denoised
    ({"sample.sampler": "pc", "timesteps": 40}, 40),                     # a DDPM checkpoint through its SDE
    ({"sample.sampler": "ode", "timesteps": 40}, None),                  # adaptive, then denoised
    ({"sample.sampler": "ode", "timesteps": 40, "ode.denoise": False}, None),  # adaptive, x(eps) itself
])
def test_sample_stage_draws_with_the_score_samplers_and_records_nfe(tmp_path, monkeypatch, overrides, nfe):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = run_stages(tmp_path, **overrides)
    assert out["samples"].shape == (6, 2) and np.isfinite(out["samples"]).all()
    assert out["trajectory"].shape[1:] == (6, 2) and len(out["labels"]) == len(out["trajectory"])
    assert out["labels"][-1] in ("sample", "denoised")
    assert out["nfe"].shape == (6,)
    if nfe is not None:
        assert (out["nfe"] == nfe).all() and out["sampling"]["nfe"] == nfe
    else:  # Dopri5: 2 evaluations to start, then 6 per attempted step, per example; + 1 to denoise
        denoise = overrides.get("ode.denoise", True)
        assert ((out["nfe"] - 2 - denoise) % 6 == 0).all() and out["sampling"]["nfe_max"] == out["nfe"].max() > 2
        # The sampler's resolved settings go with the samples; the ddpm family's ODE stops at 1 / T.
        assert out["sampling"] == {**out["sampling"], "sampler": "ode", "rtol": 1e-5, "atol": 1e-5,
                                   "sample_eps": 1 / 40, "denoise": denoise}
        assert out["labels"][-1] == ("denoised" if denoise else "sample") and len(out["labels"]) == 4
    if overrides.get("family") == "ncsn":
        checkpoint = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
        prepared = np.load(tmp_path / "prep" / "train.npy")
        assert checkpoint["params"]["ncsn"]["num_levels"] == 10
        assert checkpoint["params"]["ncsn"]["sigma_max"] == pytest.approx(largest_distance(torch.as_tensor(prepared)))
        settings = out["sampling"]
        assert settings["steps_per_level"] == 3 and settings["step_lr"] > 0 and settings["denoise"] is True


@pytest.mark.parametrize("levels", [10, 232, 333])
def test_ald_auto_steps_spend_ncsns_budget_of_1000_evaluations(levels):
    """steps_per_level auto is ceil(1000 / L): NCSN's 100 at its 10 levels, NCSNv2's 5 at 232 (the
    end-to-end run on the digits sets steps_per_level, so this rule is pinned here)."""
    p = Params.from_dict({"family": "ncsn", "sample": {"sampler": "ald"},
                          "ncsn": {"sigma_max": 50.0, "num_levels": levels}})
    settings = score_sampler_settings(p, num_scales=0)
    assert settings["steps_per_level"] == math.ceil(1000 / levels) == {10: 100, 232: 5, 333: 4}[levels]
    explicit = Params.from_dict({"family": "ncsn", "sample": {"sampler": "ald"},
                                 "ncsn": {"sigma_max": 50.0, "num_levels": levels, "steps_per_level": 2}})
    assert score_sampler_settings(explicit, num_scales=0)["steps_per_level"] == 2


@pytest.mark.parametrize(("steps", "expected"), [(0, 1000), (30, 30)])
def test_pc_walks_every_noise_scale_unless_sample_steps_says_otherwise(steps, expected):
    p = Params.from_dict({"family": "sde", "sde": {"type": "subvp"}, "sample": {"steps": steps}})
    assert score_sampler_settings(p, num_scales=1000)["num_steps"] == expected


@pytest.mark.parametrize("sampler", ["pc", "ode", "ald"])
def test_a_score_sample_does_not_depend_on_its_batch(sampler):
    """An example's sample is the same whether drawn in a batch of 5, of 2 or alone: its own
    generator (item i of the "sample" stream), and for ode its own adaptive steps (ddpm.score.ode).

    The network runs in float64. In float32, batched kernels round differently for different
    batch sizes (BLAS blocking, other SIMD paths): about 6e-8 relative per call, which over the
    ODE's thousands of evaluations, and through the adaptive steps it can move, left 1.1e-5
    between batches on an AVX512-BF16 CPU: of the order of the solver's own error, which is
    also what a batch-coupled step size (scipy's, torchdiffeq's) would change, so a float32
    comparison could not tell the two apart."""
    family = "ncsn" if sampler == "ald" else "sde"
    raw = {"family": family, "dataset": "swissroll", **TINY_MLP, "sample": {"sampler": sampler, "steps": 20},
           "sde": {"type": "ve", "sigma_max": 5.0} if family == "sde" else {}}
    if family == "ncsn":
        raw["ncsn"] = {"sigma_max": 5.0, "num_levels": 4, "steps_per_level": 3}
    p = Params.from_dict(raw)
    torch.manual_seed(0)
    network = build_network(p, VECTOR_META).double().eval()
    model, settings = score_sampler(p, TrainedModel(p, VECTOR_META, None, network, None, torch.device("cpu")))
    draw = functools.partial(draw_score_samples, model, sampler, settings, (5, 2), seed=3, trajectory_frames=3,
                             dtype=torch.float64)
    whole, info = draw(batch_size=5)
    split, _ = draw(batch_size=2)
    alone, _ = draw(batch_size=1, indices=[4])
    assert whole.dtype == torch.float64 and info["x"].shape[1:] == (5, 2) and (info["nfe"] > 0).all()
    # The bound: each network call's rows may be summed in another order per batch size, a
    # relative difference of at most fan_in * u (u = 2^-53, fan_in the longest dot product);
    # a call's difference enters the sample through a step h * drift no larger than the
    # sample's scale max|x|, so over an example's NFE calls they add up to at most
    # NFE * fan_in * u * max|x| (no cancellation assumed; here ~1e-11).
    # pc and ald take fixed steps; ode's accept/reject decisions would flip only for an error
    # ratio within ~1e-13 of 1. A shared step size would move a sample by about the solver's
    # error (rtol = atol = 1e-5 per step), a million times more.
    fan_in = max(w.shape[-1] for w in network.parameters() if w.ndim == 2)
    bound = info["nfe"].max().item() * fan_in * 2.0**-53 * whole.abs().max().item()
    torch.testing.assert_close(split, whole, rtol=0, atol=bound)
    torch.testing.assert_close(alone[0], whole[4], rtol=0, atol=bound)
    assert (whole[4] - whole[3]).abs().min() > 1e3 * bound  # the examples differ: their own generators


# ---------------------------------------------------------------------- evaluate: the ODE likelihood
def evaluate_stage(root) -> dict:
    from stages import evaluate

    assert evaluate.main(["--params", str(root / "params.yaml"), "--model", str(root / "models" / "model.pt"),
                          "--data", str(root / "prep"), "--metrics", str(root / "bound.json"),
                          "--terms", str(root / "terms.csv")]) == 0
    return json.loads((root / "bound.json").read_text())


@pytest.mark.parametrize("overrides", [{"timesteps": 20}, {"family": "sde", "sde.type": "subvp"}, {"family": "ncsn"}])
def test_evaluate_reports_the_ode_likelihood_beside_the_bound_per_family(tmp_path, monkeypatch, overrides):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    fast = {"ncsn.steps_per_level": 2} if overrides.get("family") == "ncsn" else {}
    run_stages(tmp_path, **overrides, **fast, **{"ode.num_images": 5, "sample.steps": 0})
    report = evaluate_stage(tmp_path)
    family = overrides.get("family", "ddpm")
    assert ("nll" in report) == (family == "ddpm")  # the bound: the discrete diffusion's alone
    if family == "ncsn":
        assert "ode_nll" not in report and report["likelihood"].startswith("none: family=ncsn")
        return
    ode = report["ode_nll"]
    assert report["ode_unit"] == "nats/dim" and ode["num_images"] == 5 and math.isfinite(ode["total"])
    assert ode["divergence"] == "exact" and ode["rtol"] == ode["atol"] == 1e-5 and ode["nfe"] > 2
    assert all("ode" in key for key in report if key not in ("metric", "unit", "nll", "num_images", "timesteps",
                                                              "clip_denoised"))
    # Each example's value comes from its own seeds and its own adaptive steps: batches of 2
    # give the same mean up to the float32 rounding of batched network calls, which can move a
    # step and so the value by about the solver's tolerance (rtol 1e-5 per step, tens of steps).
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["evaluate"]["batch_size"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate_stage(tmp_path)["ode_nll"]["total"] == pytest.approx(ode["total"], rel=1e-3)


# ---------------------------------------------------------------------- figures
def sde_schedule(c, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean coefficient, std and g(t) of the VE, VP and sub-VP SDEs of params section ``c``
    (Song et al. 2021, eqs. 9, 11 and 14 with their kernels), independently of ddpm.score.sde."""
    if c.type == "ve":
        std = c.sigma_min * (c.sigma_max / c.sigma_min) ** t
        return np.ones_like(t), std, std * np.sqrt(2 * np.log(c.sigma_max / c.sigma_min))
    beta = c.beta_min + t * (c.beta_max - c.beta_min)
    integral = c.beta_min * t + 0.5 * (c.beta_max - c.beta_min) * t**2  # of beta from 0 to t
    mean = np.exp(-0.5 * integral)
    if c.type == "vp":
        return mean, np.sqrt(-np.expm1(-integral)), np.sqrt(beta)
    return mean, -np.expm1(-integral), np.sqrt(beta * -np.expm1(-2 * integral))


@pytest.mark.parametrize("raw", [{"family": "sde", "sde": {"type": "ve", "sigma_max": 12.0}}, {"family": "sde"},
                                 {"family": "sde", "sde": {"type": "subvp", "beta_max": 15.0}},
                                 {"family": "ncsn", "ncsn": {"sigma_max": 12.0, "num_levels": 30}}])
def test_plot_draws_the_familys_schedule(tmp_path, monkeypatch, raw):
    """The figure's curves are the family's schedule, computed here independently: the SDE's
    mean coefficient, std and g(t) on [eps, 1] (std and g on log axes), or NCSN's geometric
    ladder sigma_max (sigma_min / sigma_max)^(i / (L - 1)). Tolerance: a few float64 roundings
    of exp, sqrt and powers (relative 1e-12, as tests/score/test_sde.py's closed forms)."""
    import stages.plot
    from stages.plot import FAMILY_FIGURES

    figures, save = [], stages.plot.save_figure
    monkeypatch.setattr(stages.plot, "save_figure", lambda fig, path: figures.append(fig) or save(fig, path))
    p = Params.from_dict(raw)
    (path,) = FAMILY_FIGURES[p.family](p, 0, None, {}, {}, tmp_path, tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG")
    (fig,) = figures
    lines = [ax.get_lines() for ax in fig.axes]
    assert [len(axis_lines) for axis_lines in lines] == [1] * len(fig.axes)
    if p.family == "ncsn":
        n = p.ncsn
        (line,) = lines[0]
        levels = np.arange(n.num_levels)
        np.testing.assert_array_equal(line.get_xdata(), levels)
        want = n.sigma_max * (n.sigma_min / n.sigma_max) ** (levels / (n.num_levels - 1))
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
        assert fig.axes[0].get_yscale() == "log"
        return
    t = np.asarray(lines[0][0].get_xdata())
    assert t[0] == p.sde.eps and t[-1] == 1.0 and len(t) >= 100 and (np.diff(t) > 0).all()
    assert len(fig.axes) == 3 and [ax.get_yscale() for ax in fig.axes] == ["linear", "log", "log"]
    for (line,), want in zip(lines, sde_schedule(p.sde, t), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), t)
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)


def test_the_trajectory_strip_takes_a_samplers_labels_and_refuses_a_wrong_count():
    from ddpm.plotting import reverse_process_figure

    frames = np.zeros((3, 4, 2))
    fig = reverse_process_figure(frames, [-1, -1, -1], VECTOR_META, labels=["init", "sigma=1", "denoised"],
                                 title="ALD")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["init", "sigma=1", "denoised"]
    with pytest.raises(ValueError, match="labels must name the 3 snapshots"):
        reverse_process_figure(frames, [-1, -1, -1], VECTOR_META, labels=["a", "b"])
