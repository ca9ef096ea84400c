"""ROI-SFT recipe on the tiny model and the sample shards: learning, freeze rules, exact resume, accumulation
invariance, every latent mode / variant, the CLI and the checkpoint contents."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.training.sft.recipe import build_model, train  # noqa: E402
from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.training import engine as engine_mod  # noqa: E402
from tests.training.helpers import DAMAGE, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.getbasetemp() / "sft_corpus")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _losses(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_frozen_vision_unchanged(corpus, tmp_path):
    init = {n: p.detach().clone() for n, p in build_model(tiny_config(corpus, tmp_path).model)[0].named_parameters()}
    seen = {}

    def grab(step, m):
        seen["step"] = step

    res = train(tiny_config(corpus, tmp_path, "run.max_steps=24", "run.save_every=0"), on_step=grab)
    log = [m["loss"] for m in _losses(tmp_path)]
    assert len(log) == 24 and seen["step"] == 24
    first, last = sum(log[:5]) / 5, sum(log[-5:]) / 5
    assert last < first - 1.0, log
    final = build_model(tiny_config(corpus, tmp_path, f"model.path={res['checkpoint']}/model").model)[0]
    for n, p in final.named_parameters():
        changed = not torch.equal(p.detach(), init[n])
        assert changed == ("visual" not in n), n  # vision tower + merger frozen (default), everything else trained


def test_every_trainable_parameter_changes_frozen_ones_do_not(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path, "run.max_steps=3", "run.save_every=0", "engine.freeze_merger=false",
                      "engine.weight_decay=0.0")
    model0 = build_model(cfg.model)[0]
    init = {n: p.detach().clone() for n, p in model0.named_parameters()}
    res = train(cfg)
    final = build_model(tiny_config(corpus, tmp_path, f"model.path={res['checkpoint']}/model").model)[0]
    trainable_seen = 0
    for n, p in final.named_parameters():
        frozen = "visual" in n and "merger" not in n
        assert torch.equal(p.detach(), init[n]) == frozen, n
        trainable_seen += not frozen
    assert trainable_seen > 20


def test_killed_after_checkpoint_resumes_exactly(corpus, tmp_path):
    a = tmp_path / "a"
    train(tiny_config(corpus, a, "run.max_steps=4", "run.save_every=2", "run.micro_batch_size=2"))
    ref = [m["loss"] for m in _losses(a)]

    b = tmp_path / "b"

    class Killed(Exception):
        pass

    def kill(step, m):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train(tiny_config(corpus, b, "run.max_steps=4", "run.save_every=2", "run.micro_batch_size=2"), on_step=kill)
    assert (b / "checkpoints" / "step-0000002" / "trainer_state.json").is_file()
    res = train(tiny_config(corpus, b, "run.max_steps=4", "run.save_every=2", "run.micro_batch_size=2",
                            "run.resume=auto"))
    resumed = [m["loss"] for m in _losses(b)]
    assert len(resumed) == 4 and res["steps"] == 4
    assert resumed[2:] == pytest.approx(ref[2:], rel=1e-6, abs=1e-7)  # the same next-step loss (and the one after)


RESUME_RUN = ("run.max_steps=6", "run.save_every=2", "run.micro_batch_size=2")


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_config(corpus, out, *RESUME_RUN))
    return _losses(out)


class Killed(BaseException):
    """Stands for kill -9 (not an Exception: no cleanup handler runs)."""


@pytest.mark.parametrize("damage", ["truncated safetensors", "garbage optimizer.pt", "truncated trainer_state.json",
                                    "killed before the manifest"])
def test_resume_falls_back_past_a_damaged_checkpoint_bit_exactly(corpus, tmp_path, monkeypatch, capsys,
                                                                  uninterrupted, damage):
    """Killed at step 5 (steps 1-5 logged, checkpoints 2 and 4), step 4 damaged: resume names it, takes step 2,
    and the run ends with exactly the uninterrupted losses, each step logged once."""
    def kill(step, m):
        if step == 5:
            raise Killed

    if damage == "killed before the manifest":  # a real kill inside the save of step 4, before its manifest
        real = engine_mod.write_manifest

        def write_manifest(d):
            if d.name.startswith("step-0000004"):
                raise Killed
            return real(d)

        monkeypatch.setattr(engine_mod, "write_manifest", write_manifest)
        kill = None
    with pytest.raises(Killed):
        train(tiny_config(corpus, tmp_path, *RESUME_RUN), on_step=kill)
    monkeypatch.undo()
    if damage != "killed before the manifest":
        hurt, reason = DAMAGE[damage]
        hurt(tmp_path / "checkpoints" / "step-0000004")
    capsys.readouterr()
    res = train(tiny_config(corpus, tmp_path, *RESUME_RUN, "run.resume=auto"))
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("resume:")]
    if damage == "killed before the manifest":
        assert skipped == []  # the half-written step-0000004.tmp never counts as a checkpoint
    else:
        assert len(skipped) == 1 and "step-0000004" in skipped[0] and reason in skipped[0], skipped
    log = _losses(tmp_path)
    assert [m["step"] for m in log] == [1, 2, 3, 4, 5, 6] and res["steps"] == 6  # no step twice
    assert [m["loss"] for m in log] == [m["loss"] for m in uninterrupted]  # bit-exact from the fallback


def test_micro_batch_times_accumulation_invariance(corpus, tmp_path):
    runs = {}
    for name, mbs, ga in (("mbs4", 4, 1), ("mbs1", 1, 4)):
        out = tmp_path / name
        train(tiny_config(corpus, out, "run.max_steps=2", "run.save_every=0", f"run.micro_batch_size={mbs}",
                          f"engine.grad_accum={ga}", "data.shuffle=false"))
        runs[name] = _losses(out)
    for key in ("loss", "ce", "roi", "grad_norm"):
        got = [m[key] for m in runs["mbs1"]]
        want = [m[key] for m in runs["mbs4"]]
        assert got == pytest.approx(want, rel=2e-4, abs=1e-6), key


@pytest.mark.parametrize("overrides", [
    ("latent.mode=teacher_forced",),
    ("latent.grad=detach", "engine.gradient_checkpointing=true"),
    ("latent.k_latent=0",),  # vanilla SFT variant
    ("latent.roi_target=full_image", "latent.roi_loss=cosine"),  # w/o ROI-SFT variant
])
def test_latent_modes_and_variants_train(corpus, tmp_path, overrides):
    res = train(tiny_config(corpus, tmp_path, "run.max_steps=2", "run.save_every=0", *overrides))
    m = res["metrics"]
    assert res["steps"] == 2 and m["grad_norm"] > 0 and torch.isfinite(torch.tensor(m["loss"]))
    if "latent.k_latent=0" in overrides:
        assert m["roi_rows"] == 0 and m["roi"] == 0
    if "latent.roi_target=full_image" in overrides:
        assert m["roi_rows"] == 4  # every row gets the full-image target


def test_cli_writes_a_complete_checkpoint(corpus, tmp_path, capsys):
    from medlvr.pipelines.cli import main
    from medlvr.training.checkpoints import read_latent_info
    from medlvr.training.model import load_checkpoint

    out = tmp_path / "run"
    rc = main(["train-sft", "--config", "configs/sft_tiny.yaml", "--set", f"data.corpus={corpus}",
               "--set", f"run.out_dir={out}", "--set", "run.max_steps=2", "--set", "run.progress=false"])
    assert rc == 0
    ck = out / "checkpoints" / "step-0000002"
    for f in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "model/processor_config.json",
              "optim/optimizer.pt", "optim/scheduler.pt", "rng/rank-0.pt", "trainer_state.json", "config.json"):
        assert (ck / f).is_file(), f
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["extra_state"]["data_position"]["index"] == 8
    assert (out / "metrics.jsonl").is_file() and any((out / "tb").iterdir())
    assert read_latent_info(ck / "model") == {"k_latent": 4, "latent": True, "text_blind": False}  # K saved with the weights
    model, proc, ids = load_checkpoint(ck / "model")
    assert ids.start == proc.tokenizer.convert_tokens_to_ids("<Medlvr_Start>")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ROI-SFT: 2 steps: loss ") and last.endswith(f"; checkpoint: {ck}"), last


def test_cli_explicit_damaged_resume_is_one_line(corpus, tmp_path, capsys):
    from medlvr.pipelines.cli import main

    damaged = tmp_path / "run" / "checkpoints" / "step-0000002"
    damaged.mkdir(parents=True)
    (damaged / "trainer_state.json").write_text("{}")  # what used to pass for complete: no manifest
    rc = main(["train-sft", "--config", "configs/sft_tiny.yaml", "--set", f"data.corpus={corpus}",
               "--set", f"run.out_dir={tmp_path / 'run'}", "--set", f"run.resume={damaged}",
               "--set", "run.progress=false"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and err == [f"medlvr: error: run.resume: checkpoint {damaged} cannot be resumed: missing "
                               "manifest.json (the save did not finish)"], err


def test_console_script_in_a_pipe_on_a_terminal_and_run_twice(corpus, tmp_path):
    """`medlvr train-sft` as a user runs it: in a pipe plain progress lines (no carriage returns) and no DeepSpeed
    accelerator warning, a readable last line; the same command again is refused in one line and the earlier run
    is untouched; `run.replace=true` writes over it on purpose, on a terminal with the bar rewritten in place."""
    import hashlib
    import re

    from tests.test_readme_commands import MEDLVR, REPO, run_in_pty, run_piped

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TERM": "xterm"}
    env.pop("DS_ACCELERATOR", None)
    out = tmp_path / "run"
    argv = [str(MEDLVR), "train-sft", "--config", str(REPO / "configs" / "sft_tiny.yaml"), "--set",
            f"data.corpus={corpus}", "--set", f"run.out_dir={out}", "--set", "run.max_steps=4", "--set",
            "run.save_every=2"]
    rc, stdout, stderr = run_piped(argv, tmp_path, env)
    assert rc == 0, stderr
    assert "\r" not in stdout + stderr and "accelerator" not in stdout + stderr
    steps = [re.fullmatch(r"train: step (\d+)/4 loss \S+ ce \S+ roi \S+ lr \S+ \(\d+s\)", line) for line in
             stderr.splitlines()]
    assert all(steps) and [int(m.group(1)) for m in steps] == [1, 2, 3, 4], stderr
    ck = out / "checkpoints" / "step-0000004"
    [last] = stdout.splitlines()
    assert last.startswith("ROI-SFT: 4 steps: loss ") and last.endswith(f"checkpoint: {ck}"), last

    def digest():
        return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file() and "tb" not in p.parts}

    before = digest()
    rc, stdout, stderr = run_piped(argv, tmp_path, env)  # the same command again
    assert (rc, stdout) == (2, "")
    assert stderr == (f"medlvr: error: run.out_dir {out} already holds a run (2 checkpoint(s), newest step-0000004): "
                      "continue it with --set run.resume=auto, keep it with --set run.out_dir=NEW_FOLDER, or write "
                      "over it with --set run.replace=true\n")
    assert digest() == before  # nothing of the earlier run was touched

    rc, tty, _ = run_in_pty([*argv, "--set", "run.replace=true"], tmp_path, env)
    assert rc == 0, tty
    assert "\r" in tty and "train:" in tty and "accelerator" not in tty  # the bar, rewritten in place
    assert tty.rstrip().splitlines()[-1].startswith("ROI-SFT: 4 steps: loss ")


def test_a_fresh_vlpo_run_into_an_earlier_run_is_refused_too(tmp_path):
    from medlvr.corpus.config import ConfigError, load_config
    from medlvr.training.vlpo.config import VLPORunConfig
    from medlvr.training.vlpo.trainer import train_vlpo

    (tmp_path / "checkpoints" / "step-0000004").mkdir(parents=True)
    cfg = load_config(VLPORunConfig, "configs/vlpo_tiny.yaml", [f"run.out_dir={tmp_path}", 'run.resume=""'])
    with pytest.raises(ConfigError, match="already holds a run .1 checkpoint.s., newest step-0000004.: continue it "
                                          "with --set run.resume=auto"):
        train_vlpo(cfg)
