"""Tests for ddpm.nn: time embedding, Swiss-roll MLP, DDPM U-Net and the model factory."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ddpm.config import ModelConfig, Params
from ddpm.errors import ConfigError
from ddpm.nn import MLP, UNet, build_model, count_parameters, timestep_embedding, unet
from ddpm.nn.dropout import Dropout
from ddpm.nn.unet import AttentionBlock, Upsample, attention, norm_groups

# Small U-Nets covering the three layouts the project uses (digits 8x8, MNIST 28x28,
# CIFAR-10 32x32), kept narrow so the whole file runs in seconds on a laptop CPU.
UNET_CASES = {
    "8x8": dict(in_channels=1, image_size=8, channel_mult=(1, 2), attn_resolutions=(4,)),
    "28x28": dict(in_channels=1, image_size=28, channel_mult=(1, 2, 2), attn_resolutions=(7,)),
    "32x32": dict(in_channels=3, image_size=32, channel_mult=(1, 2, 2, 2), attn_resolutions=(16,)),
}


def tiny_unet(case: str = "8x8", out_factor: int = 1, **overrides: object) -> UNet:
    kwargs = dict(UNET_CASES[case], base_channels=16, num_res_blocks=1, dropout=0.0)
    kwargs.update(overrides)
    return UNet(out_channels=out_factor * kwargs["in_channels"], **kwargs)


def perturb_zero_params(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Replace all-zero parameters (zero-initialised output layers, norm biases) by noise."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def random_inputs(model: UNet, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = model.image_size
    x = torch.randn(batch, model.in_channels, size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t


def model_config(dataset: str = "digits", **overrides: object) -> ModelConfig:
    """The real ``model`` params section for ``dataset`` (its ``auto`` fields resolved from
    ``DATASET_DEFAULTS``, as ``load_params`` does), with explicit overrides."""
    return replace(Params(dataset=dataset).resolved().model, **overrides)


# --- timestep_embedding -------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 7, 64, 128])
def test_embedding_shape_range_dtype(dim: int) -> None:
    t = torch.arange(0, 1000, 37)
    emb = timestep_embedding(t, dim)
    assert emb.shape == (len(t), dim)
    assert emb.dtype == torch.float32
    assert emb.abs().max() <= 1.0


def test_embedding_matches_independent_formula() -> None:
    dim, max_period = 10, 10000.0
    t = torch.tensor([0, 1, 17, 999])
    expected = torch.empty(len(t), dim, dtype=torch.float64)
    for row, step in enumerate(t.tolist()):
        for i in range(dim // 2):
            angle = step / max_period ** (i / (dim // 2))
            expected[row, i] = math.sin(angle)
            expected[row, dim // 2 + i] = math.cos(angle)
    torch.testing.assert_close(timestep_embedding(t, dim).double(), expected, atol=1e-5, rtol=0)


def test_embedding_odd_dim_pads_one_zero_column() -> None:
    t = torch.tensor([3, 500])
    emb = timestep_embedding(t, 9)
    assert torch.equal(emb[:, -1], torch.zeros(2))
    torch.testing.assert_close(emb[:, :8], timestep_embedding(t, 8))


def test_embedding_distinguishes_all_timesteps() -> None:
    emb = timestep_embedding(torch.arange(1000), 64)
    distances = torch.cdist(emb, emb) + torch.eye(1000) * 1e9
    assert distances.min() > 1e-3


def test_embedding_stays_float32_under_autocast() -> None:
    t = torch.tensor([998, 999])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = timestep_embedding(t, 32)
    assert emb.dtype == torch.float32
    assert not torch.equal(emb[0], emb[1])


def test_embedding_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match="dim=0"):
        timestep_embedding(torch.tensor([1]), 0)


# --- MLP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("time_embedding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("out_dim", [None, 4])
def test_mlp_output_shape(time_embedding: str, out_dim: int | None) -> None:
    model = MLP(hidden=32, timesteps=50, time_embedding=time_embedding, out_dim=out_dim)
    out = model(torch.randn(5, 2), torch.randint(0, 50, (5,)))
    assert out.shape == (5, out_dim or 2)


def test_mlp_learned_embedding_init_and_t_dependence() -> None:
    torch.manual_seed(0)
    model = MLP(hidden=32, timesteps=10)
    for layer in model.layers:
        assert 0.0 <= layer.embed.weight.min() and layer.embed.weight.max() < 1.0
    x = torch.randn(1, 2).expand(10, 2)
    out = model(x, torch.arange(10))
    assert torch.cdist(out, out).fill_diagonal_(1.0).min() > 0


def test_mlp_sinusoidal_accepts_any_t() -> None:
    model = MLP(hidden=16, timesteps=10, time_embedding="sinusoidal")
    out = model(torch.randn(2, 2), torch.tensor([0, 5000]))
    assert torch.isfinite(out).all()


def test_mlp_gradients_reach_all_parameters() -> None:
    for time_embedding in ("learned", "sinusoidal"):
        model = MLP(hidden=16, timesteps=20, time_embedding=time_embedding)
        model(torch.randn(8, 2), torch.arange(8)).square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.any(), name


def test_mlp_autocast_bf16() -> None:
    model = MLP(hidden=16, timesteps=10, time_embedding="sinusoidal")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 2), torch.tensor([0, 4, 9]))
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_mlp_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"time_embedding='fourier'.*'learned', 'sinusoidal'"):
        MLP(time_embedding="fourier")
    with pytest.raises(ValueError, match="num_layers=0"):
        MLP(num_layers=0)


# --- UNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(UNET_CASES))
@pytest.mark.parametrize("out_factor", [1, 2])
def test_unet_output_shape(case: str, out_factor: int) -> None:
    model = tiny_unet(case, out_factor)
    x, t = random_inputs(model, batch=2)
    out = model(x, t)
    c, size = UNET_CASES[case]["in_channels"], UNET_CASES[case]["image_size"]
    assert out.shape == (2, out_factor * c, size, size)


def test_unet_starts_at_zero_output() -> None:
    # Zero-initialised final conv (Ho et al.'s code): a fresh model predicts eps = 0.
    model = tiny_unet()
    x, t = random_inputs(model)
    assert not model(x, t).any()


def test_ddpm_cifar10_parameter_count() -> None:
    # Ho et al. report 35.7M parameters for their CIFAR-10 model (appendix B).
    model = UNet(3, 3, 32, 128, (1, 2, 2, 2), 2, (16,), dropout=0.1)
    assert round(count_parameters(model) / 1e6, 1) == 35.7


@pytest.mark.parametrize("case", ["8x8", "28x28"])
def test_unet_depends_on_t_and_x(case: str) -> None:
    # base_channels=16: with one channel per GroupNorm group the time embedding would be
    # normalised away (see norm_groups), so this also guards the group choice.
    model = perturb_zero_params(tiny_unet(case)).eval()
    x, t = random_inputs(model, batch=2)
    with torch.no_grad():
        base = model(x, t)
        other_t = model(x, t + 1)
        other_x = model(x + 0.1 * torch.randn_like(x), t)
    assert (base - other_t).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert (base - other_x).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_unet_gradients_reach_all_parameters() -> None:
    model = perturb_zero_params(tiny_unet("8x8", out_factor=2))
    x, t = random_inputs(model)
    model(x, t).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_unet_autocast_bf16_close_to_float32() -> None:
    model = perturb_zero_params(tiny_unet("28x28")).eval()
    x, t = random_inputs(model, batch=2)
    with torch.no_grad():
        reference = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
    assert low.shape == reference.shape
    assert torch.isfinite(low).all()
    assert (low.float() - reference).norm() / reference.norm() < 0.05


def test_unet_dropout_only_in_train_mode() -> None:
    model = perturb_zero_params(tiny_unet(dropout=0.5))
    x, t = random_inputs(model)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x, t), model(x, t))
        model.eval()
        assert torch.equal(model(x, t), model(x, t))


@pytest.mark.parametrize("train_mode", [False, True])
def test_unet_without_autograd_computes_the_same_bits(train_mode: bool) -> None:
    """Sampling and the bound run the residual blocks in place (no autograd): the values are
    those of the autograd path to the last bit, dropout's draws included (same seed)."""
    model = perturb_zero_params(tiny_unet("28x28", dropout=0.3)).train(train_mode)
    x, t = random_inputs(model)
    torch.manual_seed(5)
    with_grad = model(x, t).detach()
    for context in (torch.no_grad, torch.inference_mode):
        torch.manual_seed(5)
        with context():
            assert torch.equal(model(x, t), with_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        with_grad = model(x, t).detach()
        torch.manual_seed(5)
        with torch.no_grad():
            assert torch.equal(model(x, t), with_grad)


def test_unet_batch_split_matches_whole_batch() -> None:
    model = perturb_zero_params(tiny_unet("28x28")).eval()
    x, t = random_inputs(model, batch=6)
    with torch.no_grad():
        whole = model(x, t)
        halves = torch.cat([model(x[:2], t[:2]), model(x[2:], t[2:])])
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-4)


def test_attention_matches_naive_softmax_attention() -> None:
    torch.manual_seed(0)
    block = perturb_zero_params(AttentionBlock(8, num_heads=2))
    x = torch.randn(2, 8, 3, 5)
    q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # each [B, C, HW]
    heads = []
    for h in range(2):
        qh, kh, vh = (a[:, 4 * h : 4 * (h + 1)] for a in (q, k, v))  # [B, C/heads, HW]
        weights = torch.softmax(torch.einsum("bci,bcj->bij", qh, kh) / math.sqrt(4), dim=-1)
        heads.append(torch.einsum("bij,bcj->bci", weights, vh))
    attended = torch.cat(heads, dim=1).reshape(x.shape)
    expected = x + block.proj_out(attended)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: rounding moves a value by at most 2^-8 of it


def fp32_sum_error(terms: int) -> float:
    """The relative error bound of an fp32 sum of ``terms`` products (Higham's gamma_n)."""
    return terms * 2.0**-24 / (1 - terms * 2.0**-24)


def small_attention_case(tokens: int, channels: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(tokens)
    return tuple(torch.randn(3, 2, tokens, channels, generator=g).bfloat16() for _ in range(4))


@pytest.mark.parametrize(("tokens", "channels"), [(16, 64), (196, 128)])
def test_small_bf16_attention_on_the_cpu_is_within_its_rounding_bound_of_float64(tokens: int, channels: int) -> None:
    """The explicit form (fp32 logits and softmax, bf16 weights times values), forward and
    backward, against float64 on the same bf16 inputs: every element within the first-order
    bound of its roundings (weights, products and gradients to bf16: 2^-8 each; fp32 sums:
    gamma_n), computed from the float64 values. A wrong scale, a missing softmax or a
    transposed product is off by far more."""
    q, k, v, grad_out = small_attention_case(tokens, channels)
    leaves = [a.clone().requires_grad_() for a in (q, k, v)]
    out = attention(*leaves)
    out.backward(grad_out)
    assert out.dtype == torch.bfloat16 and all(a.grad.dtype == torch.bfloat16 for a in leaves)

    q64, k64, v64, g64 = (a.double().requires_grad_(i < 3) for i, a in enumerate((q, k, v, grad_out)))
    scale = channels**-0.5
    weights = torch.softmax(q64 @ k64.transpose(-1, -2) * scale, dim=-1)
    ref = weights @ v64
    ref.backward(g64)
    u, gamma = BF16_UNIT_ROUNDOFF, fp32_sum_error(max(tokens, channels))
    with torch.no_grad():
        # The logits' fp32 error delta moves each weight by a factor within exp(+-2 delta).
        delta = (gamma * scale * (q64.abs() @ k64.abs().transpose(-1, -2))).amax(-1, keepdim=True) + gamma
        eta = torch.expm1(2 * delta)
        w_err = (1 + u) * (1 + eta) - 1  # and the weights rounded to bf16
        s = weights @ v64.abs()
        out_bound = s * ((1 + u) * (w_err + gamma * (1 + w_err)) + u)
        assert ((out.double() - ref).abs() <= out_bound).all()

        # Backward: dW = G v^T and dv = W^T G in bf16; dS = W (dW - rowsum(W dW)) in fp32 from them;
        # dq = scale dS k and dk = scale dS^T q in fp32, rounded to bf16.
        m = g64.abs() @ v64.abs().transpose(-1, -2)  # bounds |dW|
        p = weights * (m + (weights * m).sum(-1, keepdim=True))  # bounds |dS|
        kappa = u * (1 + gamma) + 3 * eta.amax() + 2 * gamma  # dS's relative error, per unit of p
        w_err_max = w_err.amax()
        grad_bounds = {
            "q": scale * (p @ k64.abs()) * ((1 + u) * (kappa + gamma) + u),
            "k": scale * (p.transpose(-1, -2) @ q64.abs()) * ((1 + u) * (kappa + gamma) + u),
            "v": (weights.transpose(-1, -2) @ g64.abs()) * ((1 + u) * (w_err_max + gamma * (1 + w_err_max)) + u),
        }
        for name, leaf, leaf64 in zip("qkv", leaves, (q64, k64, v64), strict=True):
            error = (leaf.grad.double() - leaf64.grad).abs()
            worst = (error / grad_bounds[name]).max()
            assert worst <= 1, f"d{name}: an element's error is {worst:.2f} times its bound"


def test_attention_takes_the_fused_kernel_in_fp32_and_beyond_the_small_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 (sampling, the bound, fp32 training) is PyTorch's kernel to the bit, as before the
    explicit form existed; so is bf16 over more than SMALL_ATTENTION_TOKENS tokens. Only bf16 up
    to that size on the CPU bypasses it."""
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a: calls.append(a[0].shape[-2]) or fused(*a))
    q, k, v, _ = small_attention_case(16, 8)
    assert torch.equal(attention(q.float(), k.float(), v.float()), fused(q.float(), k.float(), v.float()))
    limit = unet.SMALL_ATTENTION_TOKENS
    big = [torch.randn(1, 1, limit + 1, 8).bfloat16() for _ in range(3)]
    assert torch.equal(attention(*big), fused(*big))
    assert calls == [16, limit + 1]
    at_limit = [torch.randn(1, 1, limit, 8).bfloat16() for _ in range(3)]
    attention(*at_limit)
    attention(q, k, v)
    assert calls == [16, limit + 1]


def test_upsample_is_nearest_neighbour() -> None:
    up = Upsample(3)
    nn.init.dirac_(up.conv.weight)
    nn.init.zeros_(up.conv.bias)
    x = torch.randn(2, 3, 7, 5)
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize(
    ("channels", "groups"),
    [(1, 1), (3, 1), (16, 8), (20, 10), (32, 16), (48, 24), (64, 32), (96, 32), (144, 24), (37, 1)],
)
def test_norm_groups(channels: int, groups: int) -> None:
    assert norm_groups(channels) == groups


@pytest.mark.parametrize("base_channels", [16, 20, 24, 48])
def test_unet_odd_base_widths(base_channels: int) -> None:
    model = tiny_unet("28x28", base_channels=base_channels, num_heads=2)
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            # DDPM's 32 groups wherever there are >= 2 channels per group, never InstanceNorm.
            assert module.num_channels % module.num_groups == 0
            assert module.num_channels // module.num_groups >= 2
            if module.num_channels % 32 == 0 and module.num_channels >= 64:
                assert module.num_groups == 32
    x, t = random_inputs(model, batch=1)
    assert model(x, t).shape == x.shape


def test_unet_bad_image_size_message() -> None:
    with pytest.raises(ValueError) as info:
        UNet(1, 1, 28, 16, (1, 2, 2, 2), 1, ())
    message = str(info.value)
    assert "image_size=28" in message
    assert "channel_mult=[1, 2, 2, 2]" in message
    assert "at most 3 levels" in message and "[1, 2, 2]" in message
    assert "multiple of 8" in message


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"channel_mult": ()}, r"channel_mult=\[\]"),
        ({"channel_mult": (1, 0)}, r"channel_mult=\[1, 0\]"),
        ({"attn_resolutions": (16,)}, r"attn_resolutions=\[16\].*\[8, 4\]"),
        ({"dropout": 1.0}, r"dropout=1.0.*\[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1"),
        ({"num_heads": 3}, r"num_heads=3"),
        ({"base_channels": 0}, r"base_channels=0"),
        ({"num_res_blocks": 0}, r"num_res_blocks=0"),
    ],
)
def test_unet_rejects_bad_arguments(overrides: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        tiny_unet("8x8", **overrides)


# --- build_model --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["auto", "mlp"])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_build_model_vector_data(name: str, learn_sigma: bool) -> None:
    model = build_model(model_config("swissroll", name=name), (2,), timesteps=100, learn_sigma=learn_sigma)
    assert isinstance(model, MLP)
    out = model(torch.randn(3, 2), torch.tensor([0, 50, 99]))
    assert out.shape == (3, 4 if learn_sigma else 2)


@pytest.mark.parametrize("name", ["auto", "unet"])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_build_model_image_data(name: str, learn_sigma: bool) -> None:
    model = build_model(model_config("digits", name=name), (1, 8, 8), timesteps=100, learn_sigma=learn_sigma)
    assert isinstance(model, UNet)
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([0, 99]))
    assert out.shape == (2, 2 if learn_sigma else 1, 8, 8)


def test_build_model_passes_settings() -> None:
    # Every value differs from the dataset's default, so each must come from the config.
    cfg = model_config("swissroll", mlp_hidden=24, mlp_layers=4, time_embedding="learned")
    mlp = build_model(cfg, (3,), timesteps=10, learn_sigma=False)
    assert len(mlp.layers) == 4 and mlp.layers[0].linear.out_features == 24
    assert all(layer.time_embedding == "learned" for layer in mlp.layers)
    unet = build_model(model_config("digits", base_channels=48), (3, 8, 8), timesteps=10, learn_sigma=False)
    assert unet.base_channels == 48 and unet.in_channels == 3


@pytest.mark.parametrize(
    ("name", "shape", "pattern"),
    [
        ("mlp", (1, 8, 8), r"model.name='mlp' does not fit image data.*'unet' or 'auto'"),
        ("unet", (2,), r"model.name='unet' does not fit vector data.*'mlp' or 'auto'"),
        ("resnet", (2,), r"model.name='resnet' is not one of 'auto', 'mlp', 'unet'"),
        ("auto", (1, 8, 6), r"square"),
        ("auto", (4, 4), r"neither"),
    ],
)
def test_build_model_rejects_mismatch(name: str, shape: tuple[int, ...], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_model(model_config(name=name), shape, timesteps=10, learn_sigma=False)


def test_build_model_reports_data_shape_on_unet_error() -> None:
    cfg = model_config(channel_mult=(1, 2, 2, 2), attn_resolutions=())
    with pytest.raises(ConfigError, match=r"\(1, 28, 28\).*image_size=28 cannot be halved 3 times"):
        build_model(cfg, (1, 28, 28), timesteps=10, learn_sigma=False)


# ---------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_cpu_dropout_drops_with_probability_p_in_every_lane_and_keeps_the_mean(p):
    drop = Dropout(p).train()
    n = 1 << 22
    torch.manual_seed(0)
    x = torch.ones(n // 64, 64, requires_grad=True)
    y = drop(x)
    p_q = round(p * 2**16) / 2**16  # the 16-bit mask's drop probability
    assert abs(p_q - p) <= 2**-17
    dropped = (y == 0).flatten()
    se = math.sqrt(p_q * (1 - p_q) / n)
    assert abs(dropped.double().mean().item() - p_q) < 5 * se
    # Each of the four 16-bit lanes of a 64-bit draw (the top lane holds the sign bit).
    lanes = dropped.view(-1, 4).double().mean(0)
    assert torch.all((lanes - p_q).abs() < 5 * 2 * se), lanes
    # Neighbours (same draw and adjacent draws) are independent.
    pairs = (dropped[:-1] & dropped[1:]).double().mean().item()
    assert abs(pairs - p_q**2) < 5 * math.sqrt(p_q**2 * (1 - p_q**2) / n)
    # Kept elements are scaled so that E[y] = x exactly.
    kept = y.flatten()[~dropped]
    assert torch.all(kept == 1 / (1 - p_q))
    assert abs(y.mean().item() - 1) < 5 * math.sqrt(p_q / (1 - p_q) / n)
    # The gradient is the same mask and scale.
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())


def test_cpu_dropout_is_repeatable_under_a_seed_and_keeps_the_dtype():
    drop = Dropout(0.1).train()
    x = torch.randn(3, 5, 7, 9, dtype=torch.bfloat16)  # numel not a multiple of 4
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    b = drop(x)
    torch.manual_seed(2)
    c = drop(x)
    assert a.dtype == torch.bfloat16 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dropout_is_the_identity_in_eval_mode_and_for_p_zero():
    x = torch.randn(4, 8)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
