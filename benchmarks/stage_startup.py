"""What a pipeline stage costs before it does any work: the CPU seconds (user + system) of each
stage's start-up in a fresh interpreter, one torch thread as under the tests:

- its module's imports (``import stages.<name>``: torch, the library, matplotlib where it draws);
- the MLflow client on a sqlite store (``import mlflow`` and the store's SQLAlchemy and alembic
  modules), for the stages whose module imports ``ddpm.pipeline.tracking``;
- ``torch._dynamo``, which torch.optim imports when the first optimizer is built, for the two
  stages that train a network (train, and classifier's feature classifier).

Each figure is the median of ``--rounds`` runs. The test suite starts about 150 stage processes
(the end-to-end runs of tests/e2e and the GPU check's dry run), so this start-up bounds how fast
the suite can be (benchmarks/README.md, "The test suite's time").

    python benchmarks/stage_startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import cpu_name, load_average  # noqa: E402

TRAINS = ("train", "classifier")  # the stages that build a torch.optim optimizer
OPEN_STORE = ("from mlflow.tracking import MlflowClient; "
              "MlflowClient(tracking_uri='sqlite:///mlflow.db').get_experiment_by_name('ddpm')")


def cpu_seconds(code: str, cwd: Path, env: dict[str, str]) -> float:
    """User + system CPU seconds of ``python -c code`` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_cpu(code: str, cwd: Path, env: dict[str, str], rounds: int) -> float:
    return statistics.median(cpu_seconds(code, cwd, env) for _ in range(rounds))


def logs_to_mlflow(stage: str) -> bool:
    return "ddpm.pipeline.tracking" in (REPO / "stages" / f"{stage}.py").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load average {load_average()}, {args.rounds} rounds, "
          f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as work:
        cwd = Path(work)
        # The store exists before the rounds, as it does for every stage after the first.
        subprocess.run([sys.executable, "-c", OPEN_STORE], cwd=cwd, env=env, check=True, capture_output=True)
        bare = median_cpu("pass", cwd, env, args.rounds)
        print(f"a bare interpreter: {bare:.2f} CPU s\n")
        print("| stage | imports | + MLflow client and store | + torch._dynamo | start-up |")
        print("| --- | ---: | ---: | ---: | ---: |")
        total = 0.0
        for stage in stages:
            code = f"import stages.{stage}"
            imports = median_cpu(code, cwd, env, args.rounds)
            store = dynamo = None
            if logs_to_mlflow(stage):
                code += "; " + OPEN_STORE
                store = median_cpu(code, cwd, env, args.rounds) - imports
            if stage in TRAINS:
                code += "; import torch._dynamo"
                dynamo = median_cpu(code, cwd, env, args.rounds) - imports - (store or 0.0)
            startup = imports + (store or 0.0) + (dynamo or 0.0)
            total += startup
            cells = [f"{v:.2f}" if v is not None else "-" for v in (imports, store, dynamo)]
            print(f"| {stage} | {' | '.join(cells)} | {startup:.2f} |")
        print(f"| all {len(stages)} (one `dvc repro`) | | | | {total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
