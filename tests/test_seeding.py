"""Every random stream of a run comes from ddpm.seeding: streams of one run, and the same
stream of other seeds, never share a seed, also in the 32 bits that torch's CPU generator keeps.

The old scheme (seed * 1_000_003 + index, and the training noise at seed * 1_000_003 + 7919)
gave sample 7919 the training noise stream, and sample 1_000_003 of seed 0 the stream of
sample 0 of seed 1; the tests below pin both cases.
"""

from __future__ import annotations

import pytest
import torch

from ddpm.seeding import STREAMS, StepNoise, generator, generators, randn, stream_seed

_LOW32 = 2**32 - 1  # torch's CPU generator seeds mt19937 from the low 32 bits only


def run_seeds(seed: int, n_items: int) -> list[int]:
    """The 32-bit seeds a run with ``seed`` uses for its first ``n_items`` of each stream."""
    seeds = [stream_seed(seed, "init")]
    for stream in ("data_order", "train_noise", "sample", "bound"):
        seeds += [stream_seed(seed, stream, i) for i in range(n_items)]
    for rank in range(4):
        seeds += [stream_seed(seed, "dropout", i, key=(rank,)) for i in range(n_items)]
    return [s & _LOW32 for s in seeds]


def test_streams_of_several_runs_never_share_a_cpu_seed():
    seeds = [s for run in range(3) for s in run_seeds(run, 20_000)]
    assert len(seeds) == len(set(seeds))


def test_the_old_collisions_are_gone():
    # Old: the training noise generator was seeded like sample 7919 of the same seed, and sample
    # 1_000_003 of seed 0 like sample 0 of seed 1.
    assert stream_seed(0, "train_noise", 0) & _LOW32 != stream_seed(0, "sample", 7919) & _LOW32
    assert stream_seed(0, "sample", 1_000_003) & _LOW32 != stream_seed(1, "sample", 0) & _LOW32


def test_torch_cpu_generators_keep_only_32_bits_of_the_seed():
    # Why the tests above compare the low 32 bits: if torch ever keeps all 64, they stay valid.
    a = torch.randn(4, generator=torch.Generator().manual_seed(5))
    b = torch.randn(4, generator=torch.Generator().manual_seed(5 + 2**32))
    assert torch.equal(a, b)


def test_per_example_generators_do_not_depend_on_the_batch():
    whole = randn((6, 3), generators(0, "sample", range(6)), "cpu")
    parts = torch.cat([randn((2, 3), generators(0, "sample", range(2)), "cpu"),
                       randn((4, 3), generators(0, "sample", range(2, 6)), "cpu")])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, randn((6, 3), generators(1, "sample", range(6)), "cpu"))


def test_a_stream_is_reproducible_and_keyed():
    assert torch.equal(torch.randn(5, generator=generator(3, "dropout", 10, key=(1,))),
                       torch.randn(5, generator=generator(3, "dropout", 10, key=(1,))))
    assert stream_seed(3, "dropout", 10, key=(0,)) != stream_seed(3, "dropout", 10, key=(1,))


def test_stream_ids_are_stable():
    # Seeds of saved runs depend on these ids: appending is fine, renumbering is not.
    assert STREAMS == {"init": 0, "data_order": 1, "train_noise": 2, "dropout": 3, "sample": 4, "bound": 5,
                       "metrics": 6, "bound_curve": 7, "classifier": 8, "data_split": 9, "ode_likelihood": 10}


@pytest.mark.parametrize("args, fragment", [
    ((0, "smaple"), "unknown random stream 'smaple'"),
    ((-1, "sample"), "must be >= 0"),
    ((0, "sample", -2), "item must be >= 0"),
])
def test_bad_stream_arguments_are_refused(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        stream_seed(*args)


def test_step_noise_is_each_examples_own_stream_in_blocks_whatever_the_cuts():
    """Example b's noise for steps 0, 1, ... is its generator's draws of ``block`` steps at a
    time, so any grouping of the steps into takes, and any batch it shares, gives the same."""
    shape, block, steps = (3, 2, 5), 4, 11
    whole = StepNoise(shape, generators(0, "bound", range(3)), "cpu", torch.float64, block)
    a = torch.cat([whole.take(0, 3), whole.take(3, 4), whole.take(4, steps)])
    assert a.shape == (steps, *shape)
    b = StepNoise(shape, generators(0, "bound", range(3)), "cpu", torch.float64, block).take(0, steps)
    assert torch.equal(a, b)
    # Example 1 alone, from its own generator: the same column, block by block.
    alone = StepNoise((1, 2, 5), generators(0, "bound", [1]), "cpu", torch.float64, block).take(0, steps)
    assert torch.equal(alone[:, 0], a[:, 1])
    g1 = generators(0, "bound", [1])[0]
    own = torch.cat([torch.randn((block, 2, 5), generator=g1, dtype=torch.float64) for _ in range(3)])[:steps]
    assert torch.equal(own, a[:, 1])
    assert not torch.equal(a[:, 0], a[:, 2])


def test_step_noise_refuses_steps_out_of_order_and_bad_blocks():
    noise = StepNoise((2, 3), generators(0, "bound", range(2)), "cpu", torch.float64, 4)
    noise.take(0, 2)
    with pytest.raises(ValueError, match="expected step 2, got 0"):
        noise.take(0, 2)
    with pytest.raises(ValueError, match="block=0 must be >= 1"):
        StepNoise((2, 3), None, "cpu", torch.float64, 0)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        StepNoise((2, 3), generators(0, "bound", range(3)), "cpu", torch.float64, 4)


def test_mismatched_generator_count_is_refused():
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        randn((2, 4), generators(0, "sample", range(3)), "cpu")
