"""CUDA checks (skipped without a GPU): the bound on the GPU equals the CPU's, bf16 autocast
training keeps the diffusion math in full precision, seeded GPU sampling reproduces."""

import numpy as np
import pytest
import torch

from ddpm.config import Params
from ddpm.factory import build_diffusion, build_network
from ddpm.samplers import draw_samples
from ddpm.training import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
META = {"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17}
SMALL = {"timesteps": 100, "model": {"base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                     "attn_resolutions": [4], "dropout": 0.0}}


def trained_network():
    p = Params.from_dict({**SMALL, "train": {"steps": 50, "batch_size": 64, "log_every": 10}})
    levels = np.random.default_rng(0).integers(0, 17, size=(256, 1, 8, 8), dtype=np.uint8)
    return p, train(p, levels, META, torch.device("cuda"), progress=False)


def test_bf16_training_is_finite_and_bound_matches_cpu():
    p, result = trained_network()
    assert all(np.isfinite(r["loss"]) for r in result.history)
    d = build_diffusion(p)
    x0 = (2 * torch.randint(0, 17, (32, 1, 8, 8)) / 16 - 1).float()
    net_cpu = build_network(p, META)
    net_cpu.load_state_dict({k: v.cpu() for k, v in result.ema.state_dict().items()})
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = d.bpd(net_cpu.eval(), x0, num_levels=17, generator=torch.Generator().manual_seed(1))
    gpu = d.bpd(result.ema.eval(), x0.cuda(), num_levels=17, generator=torch.Generator("cuda").manual_seed(1))
    assert gpu["total"].dtype == torch.float64
    # Different noise streams on the two devices: compare the means within their standard errors.
    diff = (cpu["total"].mean() - gpu["total"].cpu().mean()).abs().item()
    se = (cpu["total"].std() / 32**0.5).item()
    assert diff < 5 * se


def test_p_mean_variance_stays_float32_under_bf16_autocast():
    p, result = trained_network()
    d = build_diffusion(p)
    x = torch.randn(8, 1, 8, 8, device="cuda")
    t = torch.full((8,), 10, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = d.p_mean_variance(result.model, x, t)
    assert out["mean"].dtype == torch.float32 and out["log_variance"].dtype == torch.float32


def test_seeded_gpu_sampling_reproduces_and_ignores_batching():
    p, result = trained_network()
    d = build_diffusion(p)
    a, _ = draw_samples(d, result.ema.eval(), (12, 1, 8, 8), seed=3, batch_size=12, device="cuda")
    b, _ = draw_samples(d, result.ema.eval(), (12, 1, 8, 8), seed=3, batch_size=5, device="cuda")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
