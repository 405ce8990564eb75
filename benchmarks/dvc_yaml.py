"""What DVC's YAML parsing costs, in pure Python and in C (``ruamel.yaml.clib``, which pyproject.toml
lists because ruamel.yaml 0.19 no longer installs it):

- the CPU milliseconds of one safe load (what ``dvc.utils.serialize.parse_yaml`` does) of this
  repository's dvc.lock, dvc.yaml and params.yaml, each way, alternating rounds;
- the CPU seconds of ``dvc status`` in a fresh interpreter, each way (pure Python by setting
  ``ruamel.yaml.main.CParser`` to None before DVC starts), alternating rounds.

Every dvc command parses these files, ``dvc exp run`` dozens of times (once per stage and more).

    python benchmarks/dvc_yaml.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import cpu_name, load_average  # noqa: E402

DVC_STATUS = ("import sys, ruamel.yaml.main as m\n"
              "if sys.argv[1] == 'pure': m.CParser = None\n"
              "from dvc.cli import main\n"
              "sys.exit(main(['status', '-q']) not in (0, 1))")  # 1: something changed, which is fine here


def parse_cpu(text: str, pure: bool) -> float:
    from ruamel.yaml import YAML

    start = time.process_time()
    YAML(typ="safe", pure=pure).load(text)
    return time.process_time() - start


def dvc_status_cpu(way: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", DVC_STATUS, way], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from ruamel.yaml.main import CParser

    if CParser is None:
        raise SystemExit("ruamel.yaml.clib is not installed: nothing to compare (pip install -e .)")
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load average {load_average()}, {args.rounds} rounds, "
          f"python {sys.version.split()[0]}\n")
    print("| what | pure Python | C | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("dvc.lock", "dvc.yaml", "params.yaml"):
        text = (REPO / name).read_text()
        pairs = [(parse_cpu(text, True), parse_cpu(text, False)) for _ in range(args.rounds)]
        pure, c = (statistics.median(x) * 1e3 for x in zip(*pairs, strict=True))
        print(f"| parse {name} ({len(text.splitlines())} lines) | {pure:.1f} ms | {c:.1f} ms | {pure / c:.1f}x |")
    pairs = [(dvc_status_cpu("pure"), dvc_status_cpu("c")) for _ in range(args.rounds)]
    pure, c = (statistics.median(x) for x in zip(*pairs, strict=True))
    print(f"| `dvc status` (a fresh interpreter) | {pure:.2f} s | {c:.2f} s | {pure / c:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
