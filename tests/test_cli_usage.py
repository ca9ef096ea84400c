"""The `medlvr` console: every option of every subcommand has a help text, the top-level help lists every
subcommand, a config error of a training command is ONE line and exit 2 (also from the module entry points a
launcher runs as a subprocess), and `medlvr evaluate`'s progress display: a bar on a terminal, one line in a pipe."""

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medlvr.evaluation.progress import StageBar
from medlvr.pipelines.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
MEDLVR = Path(sys.executable).parent / "medlvr"


def _walk(parser: argparse.ArgumentParser, path: str):
    """(command path, action) for every argument of every (sub)parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_every_option_of_every_subcommand_has_help():
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in _walk(build_parser(), "medlvr")
               if not (a.help or "").strip() or a.help == argparse.SUPPRESS]
    assert not missing, f"options without a help text: {missing}"


def test_top_level_help_lists_every_subcommand():
    parser = build_parser()
    names = _subcommands(parser)
    assert len(names) >= 9
    overview = parser.description
    for name in names:
        assert f" {name}" in overview, (name, overview)
    text = parser.format_help()
    assert all(name in text for name in names)


@pytest.mark.parametrize("argv", [
    [str(MEDLVR), "train-sft", "--config", "configs/sft_tiny.yaml", "--set", "engine.lrr=1"],
    [str(MEDLVR), "train-vlpo", "--config", "configs/vlpo_tiny.yaml", "--set", "engine.lrr=1"],
    [sys.executable, "-m", "medlvr.training.sft.recipe", "--config", "configs/sft_tiny.yaml", "--set", "engine.lrr=1"],
    [sys.executable, "-m", "medlvr.training.vlpo.trainer", "--config", "configs/vlpo_tiny.yaml", "--set",
     "engine.lrr=1"],
], ids=["train-sft", "train-vlpo", "sft-module", "vlpo-module"])
def test_training_config_error_is_one_line_and_exit_2(argv):
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "error: unknown config key engine.lrr (did you mean engine.lr?)" in lines[0], lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stage_bar_is_a_bar_on_a_terminal_and_one_line_in_a_pipe():
    pipe = io.StringIO()
    with StageBar("medlvr: inference", 50, stream=pipe) as bar:
        for _ in range(50):
            bar.note("main slake")
            bar.update(1)
    assert pipe.getvalue().count("\n") == 1 and pipe.getvalue().startswith("medlvr: inference: 50/50 samples in")
    tty = _Terminal()
    with StageBar("medlvr: inference", 50, stream=tty) as bar:
        for _ in range(50):
            bar.update(1)
    out = tty.getvalue()
    assert "\r" in out and "50/50" in out and out.count("\n") <= 1  # redrawn in place, one line left behind


@pytest.mark.parametrize("argv", [["catalog", "--json"], ["catalog"], ["--help"]])
def test_a_closed_pipe_ends_the_command_quietly(argv):
    """`medlvr catalog --json | head -c 600`: a reader that stops early ends the command as it ends Unix tools:
    no traceback, the status a shell shows for SIGPIPE (141). Through a real pipe whose read end is closed
    before the command writes (so the write fails every time, not only when the output outgrows the pipe)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([str(MEDLVR), *argv], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == (0 if argv == ["--help"] else 141)  # argparse's help exits itself


def test_head_of_the_catalog_json_in_a_shell_pipeline():
    proc = subprocess.run(f"'{MEDLVR}' catalog --json | head -c 600; echo \" status=${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=300)
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("[") and proc.stdout.split()[-1] in ("status=0", "status=141")


@pytest.mark.parametrize("argv, line", [
    (["catalgo"], "medlvr: error: unknown command 'catalgo' (did you mean catalog?); see `medlvr --help`"),
    (["trian-sft", "--config", "x.yaml"], "medlvr: error: unknown command 'trian-sft' (did you mean train-sft?); "
                                          "see `medlvr --help`"),
    (["sample-data", "out", "--datasets", "kits32"], "medlvr: error: unknown dataset id 'kits32' "
                                                     "(did you mean kits23?); see `medlvr catalog`"),
    (["demo", "--datasets", "busi", "bcdd"], "medlvr: error: unknown dataset id 'bcdd' (did you mean bccd?); "
                                             "see `medlvr catalog`"),
])
def test_a_mistyped_command_or_dataset_gets_a_did_you_mean(tmp_path, argv, line):
    proc = subprocess.run([str(MEDLVR), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [line]


def test_build_corpus_prints_counts_as_text_not_json(tmp_path):
    """`medlvr build-corpus` in a pipe: every line of its report is prose and numbers, no raw JSON mapping."""
    from medlvr.corpus.sample_data import write_samples

    write_samples(tmp_path / "data", ["busi"], seed=0)
    proc = subprocess.run([str(MEDLVR), "build-corpus", "--data-root", str(tmp_path / "data"), "--out",
                           str(tmp_path / "out"), "--datasets", "busi", "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "shards" / "_manifest.json").read_text())  # the counts, read apart
    split_line = next(line for line in proc.stdout.splitlines() if line.startswith("images per split: "))
    assert "{" not in proc.stdout and '":' not in proc.stdout, proc.stdout
    for split in manifest["counts"]["split"]:
        assert f"{split} " in split_line, split_line


def test_evaluate_prints_a_line_per_benchmark_in_a_pipe(tmp_path):
    """`medlvr evaluate` in a pipe: a line per benchmark as each completes (not silence until a model is done)."""
    import yaml

    from medlvr.corpus.evalsets.registry import write_benchmark_samples

    write_benchmark_samples(tmp_path / "bench", ["omnimedvqa", "slake"])
    cfg = {"out_dir": str(tmp_path / "out"), "limit": 2,
           "benchmarks": {b: {"path": str(tmp_path / "bench" / b)} for b in ("omnimedvqa", "slake")},
           "models": [{"name": "base", "path": "tiny", "k_latent": 0, "prompt_style": "direct"}],
           "decode": {"batch_size": 2, "max_new_tokens": 2, "max_pixels": 12544, "threads": 1, "device": "cpu"}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(MEDLVR), "evaluate", "--config", str(tmp_path / "eval.yaml")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("base: inference: k=0 main ")]
    assert [line.split()[4].rstrip(":") for line in lines] == ["omnimedvqa", "slake"], proc.stderr
    assert all(" 2 answered, 0 already done (" in line for line in lines), lines
    assert "\r" not in proc.stderr


def test_stage_bar_job_lines_in_a_pipe_and_on_a_terminal():
    pipe = io.StringIO()
    with StageBar("m: inference", 2, stream=pipe) as bar:
        bar.update(1)
        bar.job_done("k=0 main slake: 1 answered")
        bar.update(1)
    assert pipe.getvalue().splitlines()[0] == "m: inference: k=0 main slake: 1 answered"
    tty = _Terminal()
    with StageBar("m: inference", 2, stream=tty) as bar:
        bar.job_done("k=0 main slake: 1 answered")
    assert "m: inference: k=0 main slake: 1 answered\n" in tty.getvalue()
