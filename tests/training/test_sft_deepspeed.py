"""One DeepSpeed ZeRO-2 run on CPU (gloo), launched with torchrun like a real job, against the single-process
engine: same first-step loss, same second-step loss (same AdamW, same clipping, same schedule).

Slow: the first DeepSpeed use JIT-compiles `deepspeed_shm_comm` (about 50-75 s on 2 cores); with a warm
TORCH_EXTENSIONS_DIR the test takes about 20 s.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medlvr.corpus.sample_corpus import build_sample_corpus
from tests.training.helpers import REPO, TINY_CONFIG

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")]


def _run(cmd, env):
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]


def test_zero2_step_on_cpu_matches_single_process(tmp_path_factory, tmp_path):
    corpus = build_sample_corpus(tmp_path_factory.getbasetemp() / "sft_corpus")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    common = ["--config", str(TINY_CONFIG), "--set", f"data.corpus={corpus}", "--set", "run.max_steps=2",
              "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "run.micro_batch_size=2"]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29561",
          "-m", "medlvr.training.sft.recipe", *common, "--set", f"run.out_dir={tmp_path / 'ds'}",
          "--set", "engine.backend=deepspeed"], env)
    _run([sys.executable, "-m", "medlvr.training.sft.recipe", *common, "--set", f"run.out_dir={tmp_path / 'single'}"], env)
    ds, single = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                  for d in ("ds", "single"))
    assert [m["loss"] for m in ds] == pytest.approx([m["loss"] for m in single], rel=1e-4)
    assert ds[0]["grad_norm"] == pytest.approx(single[0]["grad_norm"], rel=1e-3)
    ck = tmp_path / "ds" / "checkpoints" / "step-0000002"
    assert (ck / "model" / "model.safetensors").is_file() and any((ck / "optim" / "ds").glob("*optim_states.pt"))
