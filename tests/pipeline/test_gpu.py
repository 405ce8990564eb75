"""CUDA checks (skipped without a GPU): the bound on the GPU equals the CPU's with the same noise, bf16 autocast
training stays finite, seeded GPU sampling reproduces. (That the diffusion math stays in full precision under
bf16 autocast is tests/test_diffusion.py's, on the CPU and on CUDA.)"""

import numpy as np
import pytest
import torch

from ddpm.config import Params
from ddpm.pipeline.build import build_diffusion, build_network
from ddpm.pipeline.runtime import set_tf32
from ddpm.sampling.runner import draw_samples
from ddpm.seeding import generators
from ddpm.training.loop import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
META = {"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17}
SMALL = {"timesteps": 100, "model": {"base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                     "attn_resolutions": [4], "dropout": 0.0}}


def trained_network():
    p = Params.from_dict({**SMALL, "train": {"steps": 50, "batch_size": 64, "log_every": 10}})
    levels = np.random.default_rng(0).integers(0, 17, size=(256, 1, 8, 8), dtype=np.uint8)
    return p, train(p, levels, META, torch.device("cuda"), progress=False)


def test_bf16_training_is_finite_and_gpu_bound_equals_cpu_bound_with_the_same_noise():
    p, result = trained_network()
    assert all(np.isfinite(r["loss"]) for r in result.history)
    d = build_diffusion(p)
    x0 = (2 * torch.randint(0, 17, (32, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16 - 1).float()
    net_cpu = build_network(p, META)
    net_cpu.load_state_dict({k: v.cpu() for k, v in result.ema.state_dict().items()})
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # The same per-example "bound" generators, made on the CPU, on both devices: the bound
    # draws its noise on the generators' device, so both see identical x_t.
    cpu = d.bpd(net_cpu.eval(), x0, num_levels=17, generator=generators(1, "bound", range(32)))
    gpu = d.bpd(result.ema.eval(), x0.cuda(), num_levels=17, generator=generators(1, "bound", range(32)))
    assert gpu["total"].dtype == torch.float64 and gpu["total"].device.type == "cuda"
    # Only the float32 network differs between the devices (other kernels, other summation
    # orders; TF32 off): its outputs agree to a relative ~1e-6 (unit roundoff 6e-8 grown over
    # the layers' sums). Each bound term is smooth in them (clipping is continuous), so the
    # totals, about 3 bits/dim, agree to a few 1e-6; the float64 diffusion math adds ~1e-15.
    # Different noise would move a total by its spread over x_t (~0.1), so 1e-5 tells them apart.
    torch.testing.assert_close(gpu["total"].cpu(), cpu["total"], rtol=0, atol=1e-5)
    torch.testing.assert_close(gpu["terms"].cpu(), cpu["terms"], rtol=0, atol=1e-5)


def test_seeded_gpu_sampling_reproduces_and_ignores_batching():
    p, result = trained_network()
    d = build_diffusion(p)
    # Full float32: train() leaves TF32 on (train.tf32) and cuDNN allows it by default; its
    # 10-bit mantissa (1e-3 relative per call), rounded differently by the kernels each batch
    # size picks, would move the samples by ~1e-3 (the sum below times 1e-3).
    set_tf32(False)
    a, _ = draw_samples(d, result.ema.eval(), (12, 1, 8, 8), seed=3, batch_size=12, device="cuda")
    b, _ = draw_samples(d, result.ema.eval(), (12, 1, 8, 8), seed=3, batch_size=5, device="cuda")
    # The noise is each example's own (its generator), so only the float32 network calls differ
    # between the batch sizes: ~1e-6 per call (see the bound test above). A change e of eps moves
    # the step's mean by beta_t / sqrt(alpha_t (1 - abar_t)) e: summed over T = 100 steps, 2.13
    # for this schedule, and carried forward by at most prod 1 / sqrt(alpha_t) = 1.66 times the
    # network's own sensitivity (a few): a few 1e-5 at most; clipping only contracts.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
