"""DVC stage `prepare`: the dataset named in params -> data/prepared (arrays, class labels of
labelled datasets, meta.json)."""

from __future__ import annotations

import sys

from ddpm.config import load_params
from ddpm.data import prepare_dataset, write_prepared
from ddpm.errors import ConfigError, DataError, DatasetNotFoundError
from ddpm.pipeline.stage import run_stage, stage_parser

HINTS = {
    DatasetNotFoundError: "once the files are in place (or the network is reachable), run `dvc repro prepare` again",
    DataError: "replace the damaged file named above (a raw download: with the official one, or delete it to "
               "download it again; an image of data.folder: fix or remove it), then `dvc repro prepare`",
    ConfigError: "fix the key in params.yaml, or set it for one run with `dvc exp run -S key=value`",
}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", default="data/raw", help="downloads of torchvision datasets")
    parser.add_argument("--out", default="data/prepared")

    def body(args) -> None:
        params = load_params(args.params)
        prepared = prepare_dataset(params.dataset, args.raw, seed=params.seed, test_size=params.data.test_size,
                                   num_train_vectors=params.data.swissroll_train_size,
                                   noise=params.data.swissroll_noise, folder=params.data.folder,
                                   image_size=params.data.image_size)
        write_prepared(args.out, prepared)

    return run_stage("prepare", body, parser, argv, hints=HINTS)


if __name__ == "__main__":
    sys.exit(main())
