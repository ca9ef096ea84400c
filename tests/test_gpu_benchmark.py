"""The prepared GPU benchmark (benchmarks/gpu/run.sh + driver.py, issue 18 §3) in --dry-run: the same code on the
tiny shape on CPU, one JSON file with the device and every figure of (a)-(d), and the `medlvr serve` throughput
check (benchmarks/bench_serve.py, issue 26) in its own JSON file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_run_sh_dry_run_writes_every_figure(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "dry_run.json").read_text())
    assert res["device"].startswith("cpu") and "--dry-run" in res["command"]
    assert list(res["runs"]) == ["sdpa"]
    run = res["runs"]["sdpa"]
    assert run["settings"]["shape"] == "tiny" and run["settings"]["device"] == "cpu"
    for B in ("B1", "B16"):
        d = run["decode"][B]
        for key in ("latent_step_s", "text_step_s", "a_latent_over_text_step", "plain_generate_s",
                    "latent_generate_s", "b_latent_over_plain"):
            assert d[key] > 0, (B, key)
    sft = run["sft"]
    assert sft["tokens_per_s"] > 0 and sft["lm_flops"] > sft["vision_flops"] > 0 and sft["patch_tokens"] > 0
    assert sft["layers"] == sft["full_layers"] == 2
    assert sft["peak_memory_gib"] is None and "mfu_lm" not in sft  # CPU: no peak FLOP/s, no CUDA allocator
    v = run["vlpo"]
    for key in ("time_rollout_s", "time_ref_s", "vlpo_update_s", "grpo_update_s", "vlpo_replay_s", "grpo_replay_s",
                "vlpo_step_s", "grpo_step_s", "vlpo_over_grpo_step"):
        assert v[key] > 0, key
    assert v["trajectories"] == 16 and v["generated_positions"] == run["settings"]["vlpo_new_tokens"]
    assert "replay_chunked_over_unchunked" in v and run["total_s"] > 0
    # the `medlvr serve` throughput check (bench_serve.py): both servers answered every request, the ratio is theirs
    serve = json.loads((tmp_path / "serve_dry_run.json").read_text())
    assert (serve["device"], serve["shape"], serve["dtype"], serve["clients"]) == ("cpu", "tiny", "float32", 2)
    rates = serve["requests_per_s"]
    assert sorted(rates) == ["batched", "sequential"] and all(len(r["rounds"]) == 1 for r in rates.values())
    assert rates["batched"]["median"] > 0 and rates["sequential"]["median"] > 0
    assert serve["batched_over_sequential"] == pytest.approx(rates["batched"]["median"] / rates["sequential"]["median"])
    # 2 warm-up requests + 2 clients x 1 request reached the batched server
    assert sum(serve["batch_sizes"]) == 4 and max(serve["batch_sizes"]) <= 2


@pytest.mark.slow
def test_run_sh_multirank_dry_run_passes_every_check(multirank_dry_run):
    """The multi-GPU checks of run.sh (benchmarks/gpu/multirank.py) on 2 CPU ranks: every check present and
    passed, figures within their bounds. The runs are shared with tests/training/test_multirank.py
    (tests/conftest.py)."""
    proc, res = multirank_dry_run.proc, multirank_dry_run.result
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["device"] == "cpu" and res["ranks"] == 2 and res["passed"] is True
    assert sorted(res["checks"]) == ["diagnostics_sharded_equal_one_process", "metrics_once_by_rank0",
                                     "resume_n_to_1_weight_abs_diff", "rows_disjoint_and_equal_to_one_rank",
                                     "sft_loss_rel_diff", "sft_weight_abs_diff", "vlpo_metrics_once_by_rank0",
                                     "vlpo_reference_identical_on_every_rank", "vlpo_same_rollouts",
                                     "vlpo_weight_abs_diff", "vlpo_whole_groups_per_rank"]
    for name in ("sft_loss_rel_diff", "sft_weight_abs_diff", "resume_n_to_1_weight_abs_diff", "vlpo_weight_abs_diff"):
        assert 0 <= res["checks"][name]["value"] <= res["checks"][name]["bound"] == 1e-6
    assert 0 <= res["checks"]["vlpo_same_rollouts"]["noise_abs_diff"] <= 1e-6
    assert res["checks"]["diagnostics_sharded_equal_one_process"]["rank_files_left"] == 0
