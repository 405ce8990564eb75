"""DVC stage `report`: the evaluate stage's bound (reports/eval/bound.json) and the quality
stage's metrics (reports/quality/quality.json) -> reports/metrics.json, the one metrics file
that `dvc exp show` and `dvc metrics diff` read: the bound's keys at the top level, the
sample quality under `quality`. Each part stays its own stage's output, so a change of
quality keys does not recompute the bound, nor a retrained classifier the bound."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ddpm.errors import DataError, DatasetNotFoundError
from ddpm.io import atomic_write_json
from ddpm.pipeline.stage import run_stage, stage_parser


def read_report(path: str | Path, what: str) -> dict:
    """A JSON report of an earlier stage; one clear error when it is missing or malformed."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} not found: {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(report, dict):
        raise DataError(f"{path}: expected a JSON object ({what}), got {type(report).__name__}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--bound", default="reports/eval/bound.json")
    parser.add_argument("--quality", default="reports/quality/quality.json")
    parser.add_argument("--out", default="reports/metrics.json")

    def body(args) -> None:
        bound = read_report(args.bound, "the evaluate stage's bound")
        if "quality" in bound:
            raise DataError(f"{args.bound}: holds a key 'quality', which this stage writes")
        metrics = {**bound, "quality": read_report(args.quality, "the quality stage's metrics")}
        atomic_write_json(args.out, metrics)

    return run_stage("report", body, parser, argv, hints=HINTS)


HINTS = {
    DataError: "`dvc repro` reruns the stage whose report was edited",
    DatasetNotFoundError: "`dvc repro evaluate quality` writes the reports",
}


if __name__ == "__main__":
    sys.exit(main())
