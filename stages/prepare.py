"""DVC stage `prepare`: the dataset named in params -> data/prepared (arrays + meta.json)."""

from __future__ import annotations

import sys

from ddpm.cli import run_stage, stage_parser
from ddpm.config import load_params
from ddpm.data import prepare_dataset, write_prepared


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", default="data/raw", help="downloads of torchvision datasets")
    parser.add_argument("--out", default="data/prepared")

    def body(args) -> None:
        params = load_params(args.params)
        prepared = prepare_dataset(params.dataset, args.raw, seed=params.seed, test_size=params.data.test_size,
                                   num_train_vectors=params.data.swissroll_train_size,
                                   noise=params.data.swissroll_noise)
        write_prepared(args.out, prepared)

    return run_stage("prepare", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
