"""Tests for the RBF-hidden-layer MLP (``rbf_mlp``) and the ShuffleNet-unit U-Net
(``shufflenet_unet``): parameter counts from the layer sizes, shapes, use of the timestep,
the channel shuffle, the factory, and short training runs that must lower the loss."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_swiss_roll
from torch import nn

from ddpm.config import ModelConfig, Params
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.nn import RBFMLP, ShuffleUNet, build_model, count_parameters
from ddpm.nn.dropout import Dropout
from ddpm.nn.shufflenet import ShuffleUnit
from ddpm.schedules import get_beta_schedule


def model_config(dataset: str, **overrides: object) -> ModelConfig:
    """The real ``model`` params section for ``dataset`` with its ``auto`` fields resolved."""
    return replace(Params(dataset=dataset).resolved().model, **overrides)


def perturb_zero_params(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Replace all-zero parameters (zero-initialised output convs, norm biases) by noise, so a
    fresh model's output can show what it depends on."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


# One torch thread and a forked RNG for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def swiss_roll(n: int, seed: int) -> torch.Tensor:
    """The project's 2-D Swiss roll: make_swiss_roll columns [0, 2] / 10 (ddpm.data.prepare)."""
    points, _ = make_swiss_roll(n, noise=0.5, random_state=seed)
    return torch.tensor(points[:, [0, 2]] / 10.0, dtype=torch.float32)


# --- RBF MLP --------------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "hidden", "timesteps"), [(2, 16, 40), (3, 7, 5), (2, 128, 1000)])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_rbf_parameter_count(dim: int, hidden: int, timesteps: int, learn_sigma: bool) -> None:
    # Centres and log-widths: hidden x dim each. A head: one hidden -> dim matrix per timestep.
    heads = 2 if learn_sigma else 1
    expected = 2 * hidden * dim + heads * timesteps * hidden * dim
    assert count_parameters(RBFMLP(dim, hidden, timesteps, learn_sigma)) == expected


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_rbf_output_shape(learn_sigma: bool) -> None:
    model = RBFMLP(dim=3, hidden=8, timesteps=10, learn_sigma=learn_sigma)
    out = model(torch.randn(5, 3), torch.tensor([0, 3, 9, 9, 1]))
    assert out.shape == (5, 6 if learn_sigma else 3)


def test_rbf_matches_independent_formula() -> None:
    # Normalised Gaussian RBF features, then the timestep's own matrices, in float64 numpy.
    torch.manual_seed(0)
    model = RBFMLP(dim=2, hidden=5, timesteps=4, learn_sigma=True)
    with torch.no_grad():
        model.log_widths.normal_(0.0, 0.3)
    x = torch.randn(6, 2)
    t = torch.tensor([0, 1, 2, 3, 3, 0])
    with torch.no_grad():
        out = model(x, t).double().numpy()
    c = model.centers.detach().double().numpy()
    s = model.log_widths.detach().double().exp().numpy()
    w_mean = model.mean_head.weight.detach().double().numpy()
    w_var = model.var_head.weight.detach().double().numpy()
    for b in range(6):
        bumps = np.array([math.exp(-0.5 * sum(((x[b, d].item() - c[k, d]) / s[k, d]) ** 2 for d in range(2)))
                          for k in range(5)])
        h = bumps / bumps.sum()
        expected = np.concatenate([w_mean[t[b]] @ h, w_var[t[b]] @ h])
        # float32 forward: a few ulps of values of order one.
        np.testing.assert_allclose(out[b], expected, rtol=0, atol=1e-6)


def test_rbf_features_stay_normalised_far_from_every_centre() -> None:
    model = RBFMLP(dim=2, hidden=16, timesteps=3)
    h = model.features(torch.tensor([[50.0, -80.0], [0.0, 0.0]]))
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.sum(dim=1), torch.ones(2))


def test_rbf_uses_the_timestep() -> None:
    torch.manual_seed(0)
    model = RBFMLP(dim=2, hidden=16, timesteps=40)
    x = torch.randn(1, 2).expand(40, 2)
    with torch.no_grad():
        out = model(x, torch.arange(40))
        # Each row sees only its own timestep's head: a batch equals one-by-one calls.
        single = torch.cat([model(x[i : i + 1], torch.tensor([i])) for i in range(40)])
    assert torch.cdist(out, out).fill_diagonal_(1.0).min() > 1e-4
    torch.testing.assert_close(out, single, rtol=0, atol=1e-6)


def test_rbf_gradients_reach_all_parameters() -> None:
    model = RBFMLP(dim=2, hidden=8, timesteps=4, learn_sigma=True)
    model(torch.randn(16, 2), torch.arange(4).repeat(4)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.any(), name


def test_rbf_learned_range_trains_both_heads() -> None:
    # Through the diffusion's hybrid loss the mean head learns from the simple loss and the
    # variance head from the bound (Nichol & Dhariwal eq. 16).
    betas = get_beta_schedule("linear", 40, beta_start=1e-3, beta_end=0.05)
    diffusion = GaussianDiffusion(betas, mean_type="x0", var_type="learned_range", loss_type="hybrid")
    model = RBFMLP(dim=2, hidden=8, timesteps=40, learn_sigma=True)
    gen = torch.Generator().manual_seed(0)
    diffusion.training_losses(model, swiss_roll(64, seed=0), generator=gen)["loss"].mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.any(), name


def test_rbf_autocast_bf16() -> None:
    model = RBFMLP(dim=2, hidden=16, timesteps=10, learn_sigma=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 2), torch.tensor([0, 4, 9]))
    assert out.shape == (3, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize(("kwargs", "pattern"), [({"hidden": 0}, "hidden=0"), ({"timesteps": 2.5}, "timesteps=2.5"),
                                                 ({"dim": True}, "dim=True")])
def test_rbf_rejects_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=f"RBFMLP: {pattern} must be a positive integer"):
        RBFMLP(**kwargs)


# --- ShuffleNet U-Net -----------------------------------------------------------------------


def conv(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return c_in // groups * c_out * k * k + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def unit(c_in: int, c_out: int, emb: int, groups: int) -> int:
    """A ShuffleNet unit: GN, grouped 1x1 into c_out / 4, time projection, GN, depthwise 3x3,
    GN, grouped 1x1 out, and a 1x1 shortcut where the channel count changes."""
    mid = c_out // 4
    n = 2 * c_in + conv(c_in, mid, 1, groups) + linear(emb, mid)
    n += 2 * mid + conv(mid, mid, 3, mid) + 2 * mid + conv(mid, c_out, 1, groups)
    return n + (conv(c_in, c_out, 1) if c_in != c_out else 0)


def two_level_units(b: int) -> list[tuple[int, int]]:
    """(in, out) channels of every unit for channel_mult (1, 2), one unit per level, read off
    the diagram: skips are the input conv (b), unit (b), downsample (b), unit (2b)."""
    down = [(b, b), (b, 2 * b)]
    middle = [(2 * b, 2 * b)] * 2
    up = [(2 * b + 2 * b, 2 * b), (2 * b + b, 2 * b), (2 * b + b, b), (b + b, b)]
    return down + middle + up


def three_level_units(b: int) -> list[tuple[int, int]]:
    """channel_mult (1, 2, 2), two units per level. Skips, in order: b (input conv), b, b,
    b (downsample), 2b, 2b, 2b (downsample), 2b, 2b; each level up pops three of them."""
    down = [(b, b), (b, b), (b, 2 * b), (2 * b, 2 * b), (2 * b, 2 * b), (2 * b, 2 * b)]
    middle = [(2 * b, 2 * b)] * 2
    up_2 = [(4 * b, 2 * b)] * 3
    up_1 = [(4 * b, 2 * b), (4 * b, 2 * b), (3 * b, 2 * b)]
    up_0 = [(3 * b, b), (2 * b, b), (2 * b, b)]
    return down + middle + up_2 + up_1 + up_0


# (channel_mult, num_res_blocks, image size, units, channels of the down- and upsamplers)
LAYOUTS = {
    "two_levels": ((1, 2), 1, 8, two_level_units, lambda b: [b, 2 * b]),
    "three_levels": ((1, 2, 2), 2, 28, three_level_units, lambda b: [b, 2 * b, 2 * b, 2 * b]),
}


def expected_shufflenet_parameters(layout: str, c_in: int, c_out: int, b: int, groups: int,
                                   timesteps: int, time_embedding: str) -> int:
    _, _, _, units, resamplers = LAYOUTS[layout]
    emb = 4 * b
    n = (timesteps * b if time_embedding == "learned" else 0) + linear(b, emb) + linear(emb, emb)
    n += conv(c_in, b, 3)
    n += sum(unit(i, o, emb, groups) for i, o in units(b))
    n += sum(conv(c, c, 3) for c in resamplers(b))  # full 3x3 convs, as in the DDPM U-Net
    return n + 2 * b + conv(b, c_out, 3)


def shufflenet(layout: str = "two_levels", in_channels: int = 1, out_channels: int = 1, base_channels: int = 16,
               **kwargs: object) -> ShuffleUNet:
    mult, blocks, size, _, _ = LAYOUTS[layout]
    kwargs = {"dropout": 0.0, "timesteps": 100, **kwargs}
    return ShuffleUNet(in_channels, out_channels, size, base_channels, mult, blocks, **kwargs)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("c_in", "c_out", "base", "groups", "time_embedding"),
                         [(1, 1, 16, 4, "sinusoidal"), (3, 6, 24, 2, "learned"), (1, 2, 32, 8, "sinusoidal")])
def test_shufflenet_parameter_count(layout: str, c_in: int, c_out: int, base: int, groups: int,
                                    time_embedding: str) -> None:
    model = shufflenet(layout, c_in, c_out, base, groups=groups, time_embedding=time_embedding)
    expected = expected_shufflenet_parameters(layout, c_in, c_out, base, groups, 100, time_embedding)
    assert count_parameters(model) == expected


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("out_factor", [1, 2])
def test_shufflenet_output_shape_and_zero_start(layout: str, out_factor: int) -> None:
    size = LAYOUTS[layout][2]
    model = shufflenet(layout, in_channels=3, out_channels=3 * out_factor)
    out = model(torch.randn(2, 3, size, size), torch.tensor([0, 99]))
    assert out.shape == (2, 3 * out_factor, size, size)
    # Zero-initialised output conv, as in the DDPM U-Net: a fresh model predicts zeros.
    assert not out.any()


def test_channel_shuffle_matches_hand_permutation() -> None:
    # Zhang et al. fig. 1: reshape the channels to (groups, n), transpose, flatten. Output
    # position j takes input channel (j % groups) * n + j // groups.
    shuffle_of = {
        (8, 4): [0, 2, 4, 6, 1, 3, 5, 7],
        (12, 3): [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11],
        (6, 2): [0, 3, 1, 4, 2, 5],
    }
    for (mid, groups), expected in shuffle_of.items():
        # The shuffle acts on the unit's bottleneck, a quarter of its output channels.
        unit_ = ShuffleUnit(4 * mid, 4 * mid, emb_channels=4, groups=groups, dropout=0.0)
        shuffle = unit_.out_layers[2]
        x = torch.arange(mid, dtype=torch.float32).reshape(1, mid, 1, 1).repeat(2, 1, 3, 3)
        assert shuffle(x)[:, :, 1, 2].tolist() == [expected, expected]


def test_shuffle_unit_layers() -> None:
    """Grouped pointwise convs around a depthwise 3x3, the shuffle between the first two."""
    u = ShuffleUnit(32, 64, emb_channels=8, groups=4, dropout=0.0)
    first = u.in_layers[2]
    norm, act, shuffle, depthwise, norm2, drop, last = u.out_layers
    assert (first.in_channels, first.out_channels, first.kernel_size, first.groups) == (32, 16, (1, 1), 4)
    assert isinstance(shuffle, nn.ChannelShuffle) and shuffle.groups == 4
    assert (depthwise.in_channels, depthwise.kernel_size, depthwise.groups) == (16, (3, 3), 16)
    assert (last.in_channels, last.out_channels, last.kernel_size, last.groups) == (16, 64, (1, 1), 4)
    assert isinstance(norm, nn.GroupNorm) and isinstance(act, nn.SiLU)
    assert isinstance(norm2, nn.GroupNorm) and isinstance(drop, Dropout)  # no activation after depthwise
    assert not last.weight.any() and not last.bias.any()
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(u(x, torch.randn(2, 8)), u.skip(x))  # a fresh unit is its shortcut


def test_shuffle_mixes_the_groups() -> None:
    # Only the first group of the bottleneck carries the input. Without the shuffle the second
    # grouped conv's second group would read constant channels only; with it, every output
    # channel of the branch depends on the input.
    torch.manual_seed(0)
    u = perturb_zero_params(ShuffleUnit(16, 16, emb_channels=4, groups=2, dropout=0.0)).eval()
    with torch.no_grad():
        u.in_layers[2].weight.zero_()
        u.in_layers[2].weight[:2] = 1.0  # bottleneck channels 0, 1: the first of two groups

    def outputs_reached() -> list[bool]:
        x = torch.randn(1, 16, 4, 4, requires_grad=True)
        branch = u.out_layers(u.in_layers(x))[0]  # the unit without shortcut and time
        return [bool(torch.autograd.grad(branch[c].sum(), x, retain_graph=True)[0].any()) for c in range(16)]

    assert all(outputs_reached())
    u.out_layers[2] = nn.Identity()  # the same unit without the shuffle
    assert outputs_reached() == [True] * 8 + [False] * 8


@pytest.mark.parametrize("time_embedding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_shufflenet_uses_the_timestep_and_the_input(time_embedding: str, layout: str) -> None:
    torch.manual_seed(0)
    model = perturb_zero_params(shufflenet(layout, time_embedding=time_embedding)).eval()
    size = LAYOUTS[layout][2]
    x = torch.randn(1, 1, size, size).expand(4, 1, size, size)
    t = torch.tensor([0, 1, 50, 99])
    with torch.no_grad():
        out = model(x, t).flatten(1)
        other_x = model(x + 0.1 * torch.randn_like(x), t).flatten(1)
        # GroupNorm, not BatchNorm: a row's output does not depend on the rest of the batch.
        single = torch.cat([model(x[i : i + 1], t[i : i + 1]).flatten(1) for i in range(4)])
    assert torch.cdist(out, out).fill_diagonal_(1.0).min() > 1e-4
    assert (out - other_x).abs().amax(dim=1).min() > 1e-4
    torch.testing.assert_close(out, single, rtol=0, atol=1e-5)


def test_shufflenet_gradients_reach_all_parameters() -> None:
    model = perturb_zero_params(shufflenet(time_embedding="learned", out_channels=2))
    t = torch.arange(4)
    model(torch.randn(4, 1, 8, 8), t).square().mean().backward()
    for name, p in model.named_parameters():
        if name == "time_table.weight":  # only the rows of the timesteps drawn
            assert p.grad[t].abs().sum(dim=1).min() > 0 and not p.grad[4:].any()
        else:
            assert p.grad is not None and p.grad.any(), name


@pytest.mark.parametrize("time_embedding", ["learned", "sinusoidal"])
def test_shufflenet_autocast_bf16(time_embedding: str) -> None:
    model = perturb_zero_params(shufflenet(time_embedding=time_embedding))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 8, 8), torch.tensor([0, 99]))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_shufflenet_channels_last_gives_the_same_output() -> None:
    # train.channels_last converts model and batch; the shuffle must permute channels, not
    # the memory order.
    torch.manual_seed(0)
    model = perturb_zero_params(shufflenet("three_levels")).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 70])
    with torch.no_grad():
        expected = model(x, t)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last), t)
    # Different kernels sum in different orders: float32 rounding of outputs of order one.
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"base_channels": 24}, r"base_channels=24 must be a multiple of 16 \(4 x groups=4\).*e\.g\. 16"),
        ({"base_channels": 12, "groups": 2}, r"base_channels=12 must be a multiple of 8.*e\.g\. 8"),
        ({"groups": 1}, r"groups=1 must be an integer >= 2"),
        ({"time_embedding": "fourier"}, r"time_embedding='fourier' is not one of 'learned', 'sinusoidal'"),
        ({"dropout": 1.0}, r"dropout=1.0 must be a number in \[0, 1\)"),
        ({"channel_mult": ()}, r"channel_mult=\[\] must be a non-empty list"),
        ({"image_size": 12, "channel_mult": (1, 2, 2, 2)}, r"image_size=12 cannot be halved 3 times"),
    ],
)
def test_shufflenet_rejects_bad_arguments(kwargs: dict, pattern: str) -> None:
    args = {"in_channels": 1, "out_channels": 1, "image_size": 8, "base_channels": 16, "channel_mult": (1, 2),
            "groups": 4, **kwargs}
    with pytest.raises(ValueError, match=r"ShuffleUNet: " + pattern):
        ShuffleUNet(**args)


# --- build_model ----------------------------------------------------------------------------


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_build_model_rbf_mlp(learn_sigma: bool) -> None:
    cfg = model_config("swissroll", name="rbf_mlp", mlp_hidden=16)
    model = build_model(cfg, (2,), timesteps=40, learn_sigma=learn_sigma)
    assert isinstance(model, RBFMLP) and (model.hidden, model.timesteps) == (16, 40)
    assert (model.var_head is not None) == learn_sigma
    assert model(torch.randn(3, 2), torch.tensor([0, 20, 39])).shape == (3, 4 if learn_sigma else 2)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_build_model_shufflenet_unet(learn_sigma: bool) -> None:
    # Every setting differs from the digits defaults, so each must come from the config.
    cfg = model_config("digits", name="shufflenet_unet", base_channels=48, channel_mult=(1, 1),
                       num_res_blocks=2, dropout=0.2, time_embedding="learned")
    model = build_model(cfg, (3, 8, 8), timesteps=30, learn_sigma=learn_sigma)
    assert isinstance(model, ShuffleUNet) and model.base_channels == 48
    assert model.time_table.num_embeddings == 30 and len(model.down) == 5
    assert {m.p for m in model.modules() if isinstance(m, Dropout)} == {0.2}
    assert model(torch.randn(2, 3, 8, 8), torch.tensor([0, 29])).shape == (2, 6 if learn_sigma else 3, 8, 8)


@pytest.mark.parametrize(
    ("dataset", "name", "shape", "pattern"),
    [
        ("digits", "rbf_mlp", (1, 8, 8), r"model.name='rbf_mlp' does not fit image data.*'shufflenet_unet', 'unet'"),
        ("swissroll", "shufflenet_unet", (2,), r"model.name='shufflenet_unet' does not fit vector data.*'rbf_mlp'"),
        ("digits", "shufflenet_unet", (1, 8, 6), r"square"),
        ("mnist", "shufflenet_unet", (1, 28, 28), r"\(1, 28, 28\).*base_channels=40 must be a multiple of 16"),
    ],
)
def test_build_model_rejects_misfits(dataset: str, name: str, shape: tuple[int, ...], pattern: str) -> None:
    cfg = model_config(dataset, name=name, **({"base_channels": 40} if dataset == "mnist" else {}))
    with pytest.raises(ConfigError, match=pattern):
        build_model(cfg, shape, timesteps=10, learn_sigma=False)


@pytest.mark.parametrize(("dataset", "shape"), [("digits", (1, 8, 8)), ("mnist", (1, 28, 28)),
                                              ("cifar10", (3, 32, 32))])
def test_dataset_defaults_fit_the_shufflenet_unet(dataset: str, shape: tuple[int, ...]) -> None:
    """Each dataset's default model section, with name=shufflenet_unet, builds a ShuffleNet U-Net
    whose forward pass runs at the dataset's image size (every level's upsampling meets its
    skip) and returns a finite output of the input's shape that depends on t."""
    cfg = model_config(dataset, name="shufflenet_unet")
    model = build_model(cfg, shape, timesteps=10, learn_sigma=False)
    assert isinstance(model, ShuffleUNet) and model.base_channels == cfg.base_channels
    model = perturb_zero_params(model).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=gen)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 9]))
        other_t = model(x, torch.tensor([9, 0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.equal(out, other_t)


# --- training -------------------------------------------------------------------------------


def train_and_evaluate(model: nn.Module, diffusion: GaussianDiffusion, train: torch.Tensor, held_out: torch.Tensor,
                       steps: int, batch: int, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses on ``held_out`` (fixed t and noise) before and after ``steps`` Adam
    steps, and the losses of the best constant prediction of the target on those examples."""
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, diffusion.num_timesteps, (held_out.shape[0],), generator=gen)
    noise = torch.randn(held_out.shape, generator=gen)

    def held_out_losses() -> torch.Tensor:
        with torch.no_grad():
            return diffusion.training_losses(model, held_out, t=t, noise=noise)["loss"]

    before = held_out_losses()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, train.shape[0], (batch,), generator=gen)
        loss = diffusion.training_losses(model, train[idx], generator=gen)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    target = diffusion.training_target(held_out, t, noise)
    # The mean over the examples minimises the squared error among constants, for every t:
    # no predictor that ignores x_t does better on these examples.
    constant = (target - target.mean(dim=0)).square().flatten(1).mean(dim=1)
    return before, held_out_losses(), constant


def assert_clearly_lower(after: torch.Tensor, reference: torch.Tensor) -> None:
    """``after`` is below ``reference`` by more than three standard errors of the paired
    per-example difference (a one-sided 0.13% chance if the mean difference were zero)."""
    diff = (reference - after).double()
    assert diff.mean() > 3 * diff.std() / math.sqrt(diff.numel()), (reference.mean().item(), after.mean().item())


def test_rbf_mlp_training_lowers_the_loss() -> None:
    # The write-up's system: x0 prediction, 40 steps, betas 0.001 .. 0.05, batch 100.
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(get_beta_schedule("linear", 40, beta_start=1e-3, beta_end=0.05), mean_type="x0")
    model = RBFMLP(dim=2, hidden=16, timesteps=40)
    before, after, constant = train_and_evaluate(model, diffusion, swiss_roll(2000, seed=0), swiss_roll(500, seed=1),
                                                 steps=60, batch=100, lr=1e-2)
    assert_clearly_lower(after, before)
    assert_clearly_lower(after, constant)


def test_shufflenet_unet_training_lowers_the_loss() -> None:
    # eps prediction: an input-free predictor cannot beat the constant (about 1 per pixel),
    # so falling below it shows the network reads the noise off x_t.
    torch.manual_seed(0)
    images = torch.tensor(load_digits().images / 8.0 - 1.0, dtype=torch.float32)[:, None]
    diffusion = GaussianDiffusion(get_beta_schedule("linear", 1000), mean_type="eps")
    model = shufflenet("two_levels", timesteps=1000)
    before, after, constant = train_and_evaluate(model, diffusion, images[:-256], images[-256:],
                                                 steps=40, batch=32, lr=3e-3)
    assert_clearly_lower(after, before)
    assert_clearly_lower(after, constant)

