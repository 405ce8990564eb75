"""Run by tests/test_training.py under torchrun: train a few steps with DDP (gloo) and save
each rank's weights and logged history."""

import sys

import numpy as np
import torch

from ddpm.runtime import dist_info, init_distributed
from ddpm.training import train
from test_training import digits_meta, params

if __name__ == "__main__":
    out, precision = sys.argv[1], sys.argv[2]
    dist = dist_info()
    torch.set_num_threads(1)
    device = init_distributed(torch.device("cpu"), dist)
    levels = np.load(f"{out}/levels.npy")
    result = train(params(precision=precision), levels, digits_meta(), device, dist, progress=False)
    torch.save({"model": result.model.state_dict(), "history": result.history}, f"{out}/rank{dist.rank}.pt")
    torch.distributed.destroy_process_group()
