"""Session fixtures shared across test folders."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def multirank_dry_run(tmp_path_factory):
    """ONE `bash benchmarks/gpu/run.sh --multirank-dry-run --keep DIR` per session (2 CPU ranks, gloo; about ten
    torchrun launches): tests/test_gpu_benchmark.py asserts on its JSON, tests/training/test_multirank.py on the
    runs it keeps (ROI-SFT on 1 and 2 ranks and resumed, VLPO on 1 and 2 ranks), so no launch is made twice.
    .proc: the finished command, .result: its JSON (None if none was written), .runs: the kept run folders."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed not installed")
    out = tmp_path_factory.mktemp("multirank_dry_run")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--multirank-dry-run", "--keep", str(out / "runs")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    res = out / "multirank_dry_run.json"
    return SimpleNamespace(proc=proc, result=json.loads(res.read_text()) if res.is_file() else None,
                           runs=out / "runs")
