"""Run by tests/test_training.py under torchrun: train a few steps with DDP (gloo) and save
each rank's weights and logged history."""

import sys

import numpy as np
import torch

from ddpm.config import Params
from ddpm.runtime import dist_info, init_distributed
from ddpm.training import train
from test_training import SMALL, digits_meta

if __name__ == "__main__":
    out = sys.argv[1]
    dist = dist_info()
    torch.set_num_threads(1)
    device = init_distributed(torch.device("cpu"), dist)
    levels = np.load(f"{out}/levels.npy")
    result = train(Params.from_dict(SMALL), levels, digits_meta(), device, dist, progress=False)
    torch.save({"model": result.model.state_dict(), "history": result.history}, f"{out}/rank{dist.rank}.pt")
    torch.distributed.destroy_process_group()
