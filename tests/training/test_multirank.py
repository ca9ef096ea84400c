"""Two ranks on CPU (gloo), launched with torchrun as docs/training.md §5.1 prints it, against one rank with the
same global batch (issue 28): ROI-SFT under DeepSpeed ZeRO-2, checkpoints moved between world sizes, LoRA, VLPO on
the same rollouts, and a rank killed mid-run.

Same global batch: 2 ranks x micro-batch 2 against 1 rank x micro-batch 2 x grad_accum 2, so every forward sees
the same rows with the same padding and only the gradient sum differs (an all-reduce average against an
accumulation; the loss is already normalised by the global counts). On this CPU both give bit-identical weights;
the assertions allow 1e-6 absolute (lr 1e-3, 4 AdamW steps: a reordered fp32 sum moves a gradient by ~1e-7
relative, and AdamW's update m / (sqrt(v) + eps) carries that relative error into at most ~1e-7 x lr per step).

VLPO: 2 ranks x 1 prompt (its whole group of G = 4) against 1 rank x 2 prompts, from a policy taught the answer
format (rewards differ within a group, so the update is not zero), prompts of one question template (one token
length: the 1-rank batch of two prompts has no padding a rank's one-prompt batch lacks). Each trajectory row draws
from its own generator seeded by (seed, step, sample id, g), so both runs draw the same rollouts: token ids equal,
latent noise equal within 1e-6, and the weights after 2 steps within the same 1e-6 (measured: 0 to 7e-9). With
padding the rollouts' log-probs differ by ~7e-7 and AdamW's first step, lr x sign(g), turns that into up to 5e-5 on
entries whose gradient is near zero; that is why the prompts share a length.

The launches are shared: the runs of `bash benchmarks/gpu/run.sh --multirank-dry-run` (the session fixture
`multirank_dry_run`, tests/conftest.py: ROI-SFT on 1 and 2 ranks and the 2-rank checkpoint resumed on 1, VLPO on 1
and 2 ranks, the sharded diagnostics) serve these tests too; the rest launch their own. Each launch costs
DeepSpeed's import and the tiny model's build, with OMP / torch threads at 1 per rank: 25-50 s a launch on the
shared 2-core build machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from tests.training.helpers import REPO, TINY_CONFIG

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")]

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
STEPS, KILL_STEP = 4, 2
ATOL = 1e-6  # module docstring: why


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(ranks: int, corpus: Path, out: Path, *overrides: str) -> list[str]:
    """`torchrun --nproc_per_node G -m medlvr.training.sft.recipe --config FILE --set ...` (docs §5.1)."""
    per_rank = ["run.micro_batch_size=2", f"engine.grad_accum={2 // ranks}"]  # global batch 4 either way
    sets = [f"data.corpus={corpus}", f"run.out_dir={out}", "engine.backend=deepspeed", f"run.max_steps={STEPS}",
            f"run.save_every={KILL_STEP}", "run.keep_last=0", "run.progress=false", "run.tensorboard=false",
            "run.log_samples=true", *per_rank, *overrides]
    return [TORCHRUN, "--nproc_per_node", str(ranks), "--master_port", str(_free_port()),
            "-m", "medlvr.training.sft.recipe", "--config", str(TINY_CONFIG), *[a for s in sets for a in ("--set", s)]]


def _launch(ranks: int, corpus: Path, out: Path, *overrides: str) -> Path:
    p = subprocess.run(_cmd(ranks, corpus, out, *overrides), cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return out


def _resume_from(ck: Path, out: Path) -> Path:
    """A run killed right after the checkpoint `ck`: its folder (and the metrics up to it) in a fresh out_dir."""
    shutil.copytree(ck, out / "checkpoints" / ck.name)
    lines = (ck.parents[1] / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(x + "\n" for x in lines[:KILL_STEP]))
    return out


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path, step: int = STEPS, what: str = "model/model.safetensors") -> dict[str, np.ndarray]:
    return load_file(out / "checkpoints" / f"step-{step:07d}" / what)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst <= ATOL, worst


def _samples(out: Path, rank: int) -> dict[int, list[list[str]]]:
    return {(d := json.loads(x))["step"]: d["qa_ids"]
            for x in (out / "samples" / f"rank-{rank}.jsonl").read_text().splitlines()}


def _kept(multirank_dry_run, name: str) -> Path:
    """A run folder the shared dry run kept (it failed before that run: its error)."""
    d = multirank_dry_run.runs / name
    assert d.is_dir(), multirank_dry_run.proc.stderr[-4000:]
    return d


@pytest.fixture(scope="module")
def corpus(multirank_dry_run) -> Path:
    return _kept(multirank_dry_run, "corpus/corpus")  # build_sample_corpus(DIR) returns DIR/corpus


@pytest.fixture(scope="module")
def one(multirank_dry_run) -> Path:
    return _kept(multirank_dry_run, "one")  # _cmd(1, ...) with run.tensorboard=false


@pytest.fixture(scope="module")
def two(multirank_dry_run) -> Path:
    return _kept(multirank_dry_run, "many")  # _cmd(2, ...) with run.tensorboard=true


def test_two_ranks_equal_one_rank_losses_and_weights(one, two):
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-6, abs=1e-9)
    assert len(_losses(two)) == STEPS
    _assert_same_weights(_weights(one), _weights(two))
    _assert_same_weights(_weights(one, KILL_STEP), _weights(two, KILL_STEP))


def test_each_rank_sees_a_disjoint_half_of_every_global_batch(corpus, one, two):
    qa_ids = set(pq.read_table(next((corpus / "shards" / "train").glob("part-*.parquet")), columns=["qa_id"])
                 .column("qa_id").to_pylist())
    ref, r0, r1 = _samples(one, 0), _samples(two, 0), _samples(two, 1)
    assert sorted(ref) == sorted(r0) == sorted(r1) == list(range(1, STEPS + 1))
    seen = []
    for step in ref:
        (a,), (b,) = r0[step], r1[step]  # one micro-batch per step on each of the two ranks
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        assert [a, b] == ref[step]  # rank r holds micro-batch r of the one-rank step: same rows, same order
        seen += a + b
    assert len(set(seen)) == len(seen) == 4 * STEPS and set(seen) <= qa_ids


def test_metrics_and_tensorboard_written_once_by_rank_zero(two):
    steps = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    events = list((two / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert not (two / "trainer_error.txt").exists()
    assert sorted(p.name for p in (two / "samples").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]


@pytest.mark.parametrize("source,ranks", [("two", 1), ("two", 2), ("one", 2)], ids=["2to1", "2to2", "1to2"])
def test_checkpoint_resumes_on_another_world_size(source, ranks, one, two, corpus, tmp_path, multirank_dry_run):
    """Killed after step 2, resumed with `run.resume: auto` (the manifest is verified) on 1 or 2 ranks: the same
    weights as the uninterrupted run. Old code: DeepSpeed refused a checkpoint from another data-parallel size.
    2to1 is the dry run's `resumed` run (the same command and folder as `_resume_from` + `_launch` make)."""
    src = {"one": one, "two": two}[source]
    if (source, ranks) == ("two", 1):
        out = _kept(multirank_dry_run, "resumed")
    else:
        out = _launch(ranks, corpus, _resume_from(src / "checkpoints" / f"step-{KILL_STEP:07d}", tmp_path),
                      "run.resume=auto")
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, STEPS + 1))
    assert _losses(out) == pytest.approx(_losses(one), rel=1e-6, abs=1e-9)
    _assert_same_weights(_weights(one), _weights(out))


def test_lora_two_ranks_equal_one_rank_and_save_once(corpus, tmp_path):
    lora = ("engine.lora.r=4", "engine.lora.alpha=8.0", f"run.max_steps={KILL_STEP}")
    a = _launch(1, corpus, tmp_path / "one", *lora)
    b = _launch(2, corpus, tmp_path / "two", *lora)
    assert _losses(b) == pytest.approx(_losses(a), rel=1e-6, abs=1e-9)
    adapter = "adapter/adapter_model.safetensors"
    _assert_same_weights(_weights(a, KILL_STEP, adapter), _weights(b, KILL_STEP, adapter))
    _assert_same_weights(_weights(a, KILL_STEP), _weights(b, KILL_STEP))  # the merged model
    ck = b / "checkpoints" / f"step-{KILL_STEP:07d}"
    files = json.loads((ck / "manifest.json").read_text())["files"]
    assert sorted(f for f in files if f.startswith(("adapter/", "model/")) and f.endswith(".safetensors")) == [
        adapter, "model/model.safetensors"]


def test_a_killed_rank_ends_the_job_naming_that_rank(corpus, tmp_path):
    """SIGKILL rank 1 once training runs: torchrun ends the job (the peer blocked in a collective does not hang
    it), exits non-zero and names rank 1 as the failure."""
    p = subprocess.Popen(_cmd(2, corpus, tmp_path, "run.max_steps=1000", "run.save_every=0"), cwd=REPO, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text():
            assert p.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.5)
        rank1 = [c for c in psutil.Process(p.pid).children(recursive=True) if c.environ().get("RANK") == "1"]
        assert len(rank1) == 1
        os.kill(rank1[0].pid, signal.SIGKILL)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in err and "Signal 9 (SIGKILL)" in err


@pytest.fixture(scope="module")
def vlpo_one(multirank_dry_run) -> Path:
    return _kept(multirank_dry_run, "vlpo_one")  # 1 rank, run.prompts_per_step=2


@pytest.fixture(scope="module")
def vlpo_two(multirank_dry_run) -> Path:
    return _kept(multirank_dry_run, "vlpo_many")  # 2 ranks, run.prompts_per_step=1, run.tensorboard=true


def _vlpo_logs(out: Path, ranks: int) -> list[dict[int, dict]]:
    return [{(d := json.loads(x))["step"]: d for x in (out / "samples" / f"rank-{r}.jsonl").read_text().splitlines()}
            for r in range(ranks)]


def _rollouts(out: Path, step: int, rank: int) -> dict[str, np.ndarray]:
    return load_file(out / "samples" / "rollouts" / f"step-{step:07d}.rank-{rank}.safetensors")


def test_vlpo_two_ranks_keep_whole_groups_and_log_the_whole_batch(vlpo_two):
    """VLPO on 2 ranks, 1 prompt x G = 4 trajectories each: rank r takes prompt r of the common permutation (so a
    group never spans ranks and its advantages need no communication), and the logged step metrics are those of
    both ranks' trajectories (old code logged rank 0's share)."""
    import random

    out = vlpo_two
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    logs = _vlpo_logs(out, 2)
    perm = list(range(12))  # vlpo_tiny.yaml: synthetic_size 12, engine.seed 0, data.split_seed 0
    random.Random(0).shuffle(perm)
    for step, m in zip((1, 2), metrics):
        ranks = [logs[r][step] for r in range(2)]
        assert [d["sample_ids"] for d in ranks] == [[f"syn-0-{perm[2 * (step - 1) + r]}"] for r in range(2)]
        assert [len(d["reward"]) for d in ranks] == [4, 4]  # the prompt's whole group on its rank
        rewards = np.array(ranks[0]["reward"] + ranks[1]["reward"], dtype=np.float64)
        lengths = np.array(ranks[0]["response_length"] + ranks[1]["response_length"], dtype=np.float64)
        assert m["reward_mean"] == pytest.approx(rewards.mean(), abs=1e-9)
        assert m["reward_std"] == pytest.approx(rewards.std(ddof=1), abs=1e-9)
        assert m["response_length"] == pytest.approx(lengths.mean(), abs=1e-9)
        neg_logp = np.array(ranks[0]["neg_logp"] + ranks[1]["neg_logp"], dtype=np.float64)
        answer = np.array(ranks[0]["answer_tokens"] + ranks[1]["answer_tokens"], dtype=np.float64)
        assert m["entropy"] == pytest.approx(neg_logp.sum() / answer.sum(), rel=1e-6)
        assert m["answer_tokens"] == pytest.approx(answer.mean(), abs=1e-9)
    files = json.loads((out / "checkpoints" / "step-0000002" / "manifest.json").read_text())["files"]
    assert [f for f in files if f.endswith(".safetensors")] == ["model/model.safetensors"]
    assert (out / "final" / "model" / "model.safetensors").is_file()
    assert len(list((out / "tb").rglob("events.out.tfevents.*"))) == 1  # TensorBoard once, by rank 0


def test_vlpo_two_ranks_equal_one_rank_on_the_same_rollouts(vlpo_one, vlpo_two, multirank_dry_run):
    """The module docstring's VLPO comparison. Same rollouts: every trajectory row has the seed of its (step, sample
    id, g) on both world sizes, the recorded token ids are equal and the latent noise equal within 1e-6 (old code:
    a generator per rank position, seed * 1000 + rank, so rank 1 drew other noise than the 1-rank run's prompt 1).
    Group advantages (recomputed here from the logged rewards) are those of each prompt's whole group; the losses
    and the weights after the 2 updates equal the 1-rank run's."""
    one, two = _vlpo_logs(vlpo_one, 1)[0], _vlpo_logs(vlpo_two, 2)
    G, nonzero_groups = 4, 0
    for step in (1, 2):
        ranks = [two[r][step] for r in range(2)]
        assert one[step]["sample_ids"] == ranks[0]["sample_ids"] + ranks[1]["sample_ids"]
        assert one[step]["row_seeds"] == ranks[0]["row_seeds"] + ranks[1]["row_seeds"]
        assert len(set(one[step]["row_seeds"])) == 2 * G
        ref = _rollouts(vlpo_one, step, 0)
        got = [_rollouts(vlpo_two, step, r) for r in range(2)]
        for key in ("sequences", "gen_mask", "sampled_mask"):
            assert np.array_equal(ref[key], np.concatenate([g[key] for g in got])), key
        noise = np.concatenate([g["noise"] for g in got])
        assert np.abs(noise.astype(np.float64) - ref["noise"]).max() <= ATOL
        assert (np.linalg.norm(ref["noise"], axis=-1) > 0).any()  # the latent slots really carry noise
        for r, g in enumerate(got):  # eq. 5 over the rank's one whole group
            rew = np.array(ranks[r]["reward"], dtype=np.float64)
            std = rew.std(ddof=1)
            adv = np.zeros(G) if std == 0 else (rew - rew.mean()) / (std + 1e-6)
            assert np.allclose(g["advantages"], adv, atol=1e-6)
            nonzero_groups += std > 0
        assert np.allclose(ref["advantages"], np.concatenate([g["advantages"] for g in got]), atol=1e-6)
    assert nonzero_groups >= 2  # the update has a policy-gradient signal
    assert _losses(vlpo_two) == pytest.approx(_losses(vlpo_one), rel=1e-6, abs=1e-8)
    final = "final/model/model.safetensors"
    a, b = load_file(vlpo_one / final), load_file(vlpo_two / final)
    _assert_same_weights(a, b)
    start = load_file(_kept(multirank_dry_run, "vlpo_policy") / "model" / "model.safetensors")
    assert max(float(np.abs(a[k].astype(np.float64) - start[k]).max()) for k in a) > 1e-4  # the update moved


def test_vlpo_reference_model_is_the_same_on_every_rank(vlpo_one, vlpo_two):
    """Each rank records the sha256 of its reference model's parameters (`run.log_samples`): both ranks of the
    2-rank run and the 1-rank run hold the same reference."""
    hashes = [json.loads((d / "samples" / f"reference.rank-{r}.json").read_text())
              for d, n in ((vlpo_one, 1), (vlpo_two, 2)) for r in range(n)]
    assert [h["rank"] for h in hashes] == [0, 0, 1]
    digests = {h["reference_sha256"] for h in hashes}
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_a_rank_that_raises_ends_the_job_with_its_error_in_one_line(corpus, one, tmp_path):
    """The rows rank 1 reads at step 1 have a broken image: rank 1 prints its error in one line and the job ends
    (rank 0, waiting in the step's all-reduce, is stopped by torchrun) with a non-zero status."""
    import pyarrow as pa

    broken = set(_samples(one, 0)[1][1])  # micro-batch 2 of the 1-rank step 1 = rank 1's rows on 2 ranks
    src = next((corpus / "shards" / "train").glob("part-*.parquet"))
    dst = tmp_path / "corpus" / "shards" / "train" / src.name
    dst.parent.mkdir(parents=True)
    f = pq.ParquetFile(src)
    with pq.ParquetWriter(dst, f.schema_arrow) as w:
        for g in range(f.metadata.num_row_groups):  # the same row groups: the same data order
            t = f.read_row_group(g)
            png = [b"not a png" if q in broken else x for q, x in
                   zip(t.column("qa_id").to_pylist(), t.column("image").to_pylist())]
            field = t.schema.field("image")
            t = t.set_column(t.schema.get_field_index("image"), field, pa.array(png, field.type))
            w.write_table(t, row_group_size=t.num_rows)
    p = subprocess.run(_cmd(2, tmp_path / "corpus", tmp_path / "out", "run.max_steps=1"), cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.startswith("medlvr trainer: error: ")]
    own = [x for x in lines if x.startswith("medlvr trainer: error: rank 1: ")]
    assert len(own) == 1 and own[0].startswith("medlvr trainer: error: rank 1: UnidentifiedImageError: "), lines
    # rank 0 may report its side first: the connection its peer closed, never an error of its own
    assert all(x in own or (x.startswith("medlvr trainer: error: rank 0: ") and "peer" in x) for x in lines), lines
