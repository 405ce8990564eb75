"""Run by tests/training/test_training.py and tests/training/test_train_state.py under torchrun: train with DDP
(gloo) and save each rank's weights and logged history.

    _ddp_worker.py OUT PRECISION [JSON]

JSON (optional) holds ``train`` overrides, plus ``dropout`` (model.dropout), ``state`` (the
resumable state's path) and ``tag`` (the output is OUT/{tag}rank{r}.pt); a list of such objects
trains each in turn in the same processes (one torchrun start, about 9 s of CPU on 2 cores, for
several runs)."""

import json
import sys

import numpy as np
import torch
from test_training import digits_meta, params

from ddpm.pipeline.runtime import dist_info, init_distributed
from ddpm.training.loop import train


def run(out: str, precision: str, extra: dict, device: torch.device, dist) -> None:
    extra = dict(extra)
    state, tag = extra.pop("state", None), extra.pop("tag", "")
    model = {"dropout": extra.pop("dropout")} if "dropout" in extra else None
    levels = np.load(f"{out}/levels.npy")
    result = train(params(model, precision=precision, **extra), levels, digits_meta(), device, dist,
                   state_path=state, progress=False)
    torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict(), "history": result.history},
               f"{out}/{tag}rank{dist.rank}.pt")


if __name__ == "__main__":
    out, precision = sys.argv[1], sys.argv[2]
    runs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    dist = dist_info()
    torch.set_num_threads(1)
    device = init_distributed(torch.device("cpu"), dist)
    for extra in runs if isinstance(runs, list) else [runs]:
        run(out, precision, extra, device, dist)
    torch.distributed.destroy_process_group()
