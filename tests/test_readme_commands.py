"""Every `medlvr` command the README prints, run as a user runs it: the installed console script, the command line
as printed (placeholders filled with real folders of sample data, nothing added), once with output to a pipe and
once under a pseudo-terminal (progress bars on), checking the exit code and the output.

A synopsis line (`medlvr ingest --data-root DIR --out DIR [--datasets ID ...] ...`) runs twice in each mode: with
every optional part left out, and with every optional part given (the first of `a|b|c`; the other alternatives
are in NOT_RUN with the reason). The data root holds two datasets (busi, bccd), so the commands without
`--datasets` also show how a partial data root is reported: one "skipped N datasets ..." line on stderr.
A `medlvr` line in the README that this test does not know fails it (add its expected output to EXPECT).

The two passes share one main-job home: `medlvr demo` (default home `./pipelines/dagster_home`) and `medlvr ask`
(which reads the main job's VLPO model from there) run in one working directory for both passes. The pass that
comes first runs the whole main job into it; the other finds every job up to date and reruns none, as a user's
second `medlvr demo` does, so on the terminal it checks the rendering (each stage one status line rewritten in
place) without a second whole main job. Every other command runs in its pass's own folder, as before.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from medlvr.corpus.sample_data import write_samples
from medlvr.pipelines.console import CLEAR_LINE
from tests.catalog_count import N_DATASETS, N_MODALITIES

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MEDLVR = Path(sys.executable).parent / "medlvr"  # the venv's console script, as installed
DATASETS = ["busi", "bccd"]

# subcommand -> what its output must contain (besides exit code 0 and no traceback)
EXPECT = {
    "catalog": ["acdc", "kits23"],  # the table (+ "N datasets") or the JSON list (N rows), checked below
    "sample-data": ["sample datasets", "truth records"],
    "ingest": ["busi", "total"],
    "build-corpus": ["QA pairs:", "shards:", "card:"],
    "train-sft": ["ROI-SFT: 30 steps: loss", "checkpoint: "],
    "train-vlpo": ["VLPO: ", "mean reward", "final model: "],
    "evaluate": ["report:", "report.html"],
    "demo": ["QA pairs:", "steps run:", "evaluation report:"],
    "ask": ["latent segment:", "latent 1: points at", "answer:", "overlay: ask_out/imaging_latents.png"],
}
# subcommands run in the working directory shared by both passes: the main job's default home is under it
MAIN_JOB_HOME_COMMANDS = ("demo", "ask")
# printed commands (or alternatives) that this test does not run, and why
NOT_RUN = {
    "evaluate-merge": "merges the rank files of a torchrun-sharded evaluation, which must exist first: "
                      "tests/evaluation/test_cli.py::test_evaluate_merge_as_printed runs it through the console "
                      "script after two ranks' inference",
    "transformers": "the transformers QA back end needs a real local checkpoint directory",
    "openai": "the openai QA back end needs an OpenAI-compatible endpoint",
    "serve": "a server runs until it is stopped: test_readme_serve_as_printed starts each printed form, calls it "
             "with the README's client code and stops it",
    "configs/eval_endpoint.yaml": "needs an OpenAI-compatible server at the config's base_url: "
                                  "tests/evaluation/test_endpoint_eval.py::test_readme_endpoint_line runs the printed "
                                  "line through the console script against a fake server",
}


def printed_commands() -> list[str]:
    """The `medlvr ...` lines of the README's bash blocks; indented lines continue the line above; comments cut."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        block = textwrap.dedent(block)  # a block inside a list item is indented as a whole
        continues = False  # the line before, in this block, is a `medlvr` command
        for raw in block.splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", raw).rstrip().removesuffix("\\").rstrip()  # `\` continues
            if not line:
                continue
            if raw[:1].isspace() and continues:
                commands[-1] += " " + line.strip()
            elif line.startswith("medlvr "):
                commands.append(line)
                continues = True
            else:
                continues = False
    return commands


def covered_by_examples(command: str, commands: list[str]) -> bool:
    """A synopsis whose config or model is a placeholder (`--config FILE`, `--model CKPT`) runs as the README's
    concrete example lines of the same subcommand (`medlvr train-sft --config configs/sft_tiny.yaml ...`)."""
    sub = command.split()[1]
    return any(p in command and any(c.split()[1] == sub and p not in c for c in commands)
               for p in ("--config FILE", "--model CKPT"))


def forms(command: str) -> list[str]:
    """A synopsis as run: every optional [...] left out, then every one given (first alternative of a|b|c)."""
    if "[" not in command:
        return [command]
    minimal = re.sub(r"\s*\[[^\]]*\]", "", command)
    full = re.sub(r"\[([^\]]*)\]", r"\1", command)
    full = re.sub(r"(\S+?)\|\S+", r"\1", full)  # template|transformers|openai -> template
    return [minimal, full]


class Workspace:
    """Folders and files that the placeholders stand for; later commands use what earlier ones wrote."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        write_samples(self.data, DATASETS, seed=0)
        shutil.copytree(REPO / "configs", root / "configs")  # the training lines name configs/ relative to the repo
        ingest_yaml = re.search(r"```yaml\n(workers:.*?)```", README.read_text(), re.S).group(1)
        (root / "ingest.yaml").write_text(ingest_yaml)  # the README's own example config
        (root / "build.yaml").write_text("ingest:\n" + "".join(f"  {line}\n" for line in ingest_yaml.splitlines()))
        self.outs = 0
        self.corpus: Path | None = None

    def fresh(self, name: str) -> str:
        self.outs += 1
        return str(self.root / f"{name}{self.outs}")

    def sft_checkpoint(self) -> str:
        checkpoints = sorted((self.root / "runs" / "sft_tiny" / "checkpoints").glob("step-*"))
        assert checkpoints, "train-sft wrote no checkpoint"
        return str(checkpoints[-1])

    def fill(self, words: list[str]) -> list[str]:
        sub = words[1]
        out: list[str] = []
        i = 0
        while i < len(words):
            w, prev = words[i], words[i - 1] if i else ""
            if w == "..." and prev != "ID":
                i += 1
                continue
            if w == "OUT_DIR":
                w = self.fresh("samples")
            elif w == "DIR" and prev == "--data-root":
                w = str(self.data)
            elif w == "DIR" and prev == "--out":
                w = self.fresh(sub)
                if sub == "build-corpus":
                    self.corpus = Path(w)
            elif w == "ID":
                out.extend(DATASETS)
                i += 2 if words[i + 1:i + 2] == ["..."] else 1
                continue
            elif w == "N":
                w = "2"
            elif w == "DIR" and prev == "--dagster-home":
                w = self.fresh("dagster_home")
            elif w in ("ingest.yaml", "build.yaml"):
                w = str(self.root / w)
            elif w == "KEY=VALUE":
                w = "normalise.max_side=256" if sub == "ingest" else "ingest.normalise.max_side=256"
            elif w == "data.corpus=<build-corpus out>":
                assert self.corpus is not None, "the README runs build-corpus before train-sft"
                w = f"data.corpus={self.corpus}"
            elif w.startswith("model.path=<sft"):
                w = "model.path=" + self.sft_checkpoint() + "/model"
            out.append(w)
            i += 1
        return [str(MEDLVR), *out[1:]]


def rejoin(words: list[str]) -> list[str]:
    """`<build-corpus out>` and `<sft checkpoint>/model` are one placeholder each, split by the blank above."""
    joined: list[str] = []
    for w in words:
        if joined and joined[-1].count("<") > joined[-1].count(">"):
            joined[-1] += " " + w
        else:
            joined.append(w)
    return joined


# A guard against a hang, not a speed limit: the main job took 983 s on a 2-core machine at load 13, so the
# limit is far above any loaded run (tests never assert on wall time).
HANG_LIMIT_S = 3600


def run_piped(argv: list[str], cwd: Path, env: dict) -> tuple[int, str, str]:
    p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=HANG_LIMIT_S)
    return p.returncode, p.stdout, p.stderr


def run_in_pty(argv: list[str], cwd: Path, env: dict) -> tuple[int, str, str]:
    """stdin, stdout and stderr on a 30x120 pseudo-terminal, as in an interactive shell."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], HANG_LIMIT_S)
            if not ready:
                proc.kill()
                raise TimeoutError(f"{argv} printed nothing for {HANG_LIMIT_S} s")
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace"), ""


def test_every_printed_command_is_known():
    subcommands = {c.split()[1] for c in printed_commands()}
    assert subcommands == set(EXPECT) | {"evaluate-merge", "serve"}, subcommands
    assert len(printed_commands()) >= 7


@pytest.fixture(scope="module")
def main_job_cwd(tmp_path_factory) -> Path:
    """The working directory of `medlvr demo` and `medlvr ask` in both passes (MAIN_JOB_HOME_COMMANDS): the main
    job's default home, ./pipelines/dagster_home, is built once, by the first pass."""
    return tmp_path_factory.mktemp("main_job_cwd")


@pytest.mark.parametrize("mode", ["pipe", "pty"])
def test_readme_commands_as_printed(tmp_path, mode, main_job_cwd):
    assert MEDLVR.is_file(), f"no console script at {MEDLVR}: install the package (make install)"
    ws = Workspace(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TERM": "xterm"}
    env.pop("MEDLVR_PATIENT_SALT", None)
    for var in ("DAGSTER_HOME", "MEDLVR_HOME"):  # `medlvr demo` as printed: its default home under the cwd
        env.pop(var, None)
    run = run_piped if mode == "pipe" else run_in_pty
    ran = 0
    printed_all = printed_commands()
    for printed in printed_all:
        sub = printed.split()[1]
        if sub in NOT_RUN or covered_by_examples(printed, printed_all) or any(
                "/" in key and key in printed.split() for key in NOT_RUN):
            continue
        for form in forms(printed):
            argv = ws.fill(rejoin(shlex.split(form)))  # a quoted question is one argument
            cwd = main_job_cwd if sub in MAIN_JOB_HOME_COMMANDS else tmp_path
            home_built = (cwd / "pipelines" / "dagster_home" / "medlvr" / "runs" / "vlpo").is_dir()
            rc, out, err = run(argv, cwd, env)
            shown = f"$ {' '.join(argv)}\n{out}\n{err}"
            assert rc == 0, shown
            assert "Traceback" not in out + err, shown
            for expected in EXPECT[sub]:
                assert expected in out, (expected, shown)
            if sub == "demo" and "--dagster-home" not in argv and home_built:
                # the other pass built the shared home: nothing reruns, as on a user's second `medlvr demo`
                assert "steps run: 0, reused (up to date): " in out and ", failed: 0" in out, shown
            if sub == "demo" and mode == "pty":  # on a terminal: each stage a status line rewritten in place
                assert CLEAR_LINE + "[corpus] " in out and CLEAR_LINE + "[evaluation] " in out, shown
            if sub == "demo" and mode == "pipe":  # in a pipe: plain lines, no carriage return
                assert "\r" not in out + err and "[corpus] " in out + err, shown
            if mode == "pipe":
                assert len(err.splitlines()) <= (1 if sub in ("ingest", "build-corpus") else 0) or \
                    sub.startswith("train") or sub in ("evaluate", "demo"), shown  # a partial data root: one
                # line; training, evaluation and the main job report their progress on stderr
                if sub == "catalog":
                    assert len(json.loads(out)) == N_DATASETS if "--json" in argv else \
                        f"{N_DATASETS} datasets, {N_MODALITIES} modalities" in out
                if sub in ("ingest", "build-corpus") and "--datasets" not in argv:
                    skipped = N_DATASETS - len(DATASETS)
                    assert err.startswith(f"skipped {skipped} datasets not under {ws.data}:"), shown
            ran += 1
    # catalog, sample-data, ingest, build-corpus, demo: 2 forms each; train-sft, train-vlpo: their examples;
    # evaluate: its 2 examples; ask: its example (on the first demo's checkpoint and sample volume)
    assert ran == 15


# ---- "Use the model elsewhere": the Python blocks and `medlvr serve` as printed -------------------------------


def elsewhere_python_blocks() -> list[str]:
    section = README.read_text().split("## Use the model elsewhere", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A MedLVR model folder (K = 2) and a PNG, for the placeholders CKPT and scan.png."""
    import numpy as np
    from PIL import Image

    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    root = tmp_path_factory.mktemp("elsewhere")
    b = build_tiny(seed=1)
    folder = save_checkpoint(b.model, b.processor, root / "model", k_latent=2)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "scan.png")
    return folder, root


def test_readme_plain_transformers_block_runs_without_medlvr(tiny_folder):
    """The first block, as printed but for the placeholder path, in a Python where medlvr is not importable."""
    from tests.training.test_portable_generate import plain_python_env

    folder, root = tiny_folder
    block = elsewhere_python_blocks()[0]
    assert 'CKPT = "path/to/checkpoint/model"' in block and "trust_remote_code=True" in block
    code = "try:\n    import medlvr\nexcept ModuleNotFoundError:\n    pass\nelse:\n    raise SystemExit(1)\n" + \
        block.replace("path/to/checkpoint/model", str(folder))
    cmd, env = plain_python_env(root)
    p = subprocess.run([cmd[0], "-S", "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    gen, shape = p.stdout.strip().splitlines()[-2:]
    assert gen.startswith("<Medlvr_Start><Medlvr_Latent><Medlvr_Latent><Medlvr_End>")
    assert shape.startswith("(1, 2, ")  # K = 2 latent states


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_serve_as_printed(tiny_folder):
    """Each printed `medlvr serve` form (every optional part left out, then every one given, `--port 0`), called
    with the README's client block, then stopped with SIGINT as a user would (Ctrl-C)."""
    import signal

    folder, root = tiny_folder
    client_block = elsewhere_python_blocks()[1]
    lines = [c for c in printed_commands() if c.startswith("medlvr serve")]
    assert len(lines) == 2
    fill = {"--model": str(folder), "--port": "0", "--max-batch": "4", "--max-queue": "8",
            "--request-timeout": "120", "--max-prompt-tokens": "4096", "--allowed-local-media-path": str(root)}
    ran = 0
    for printed in lines:
        for form in forms(printed):
            words = [w for w in shlex.split(form) if w != "..."]
            argv = [str(MEDLVR)] + [fill.get(words[i - 1], w) if i else w for i, w in enumerate(words)][1:]
            if "--port" not in argv and not _free(8000):
                continue  # the default port is taken on this shared machine: the forms with --port cover it
            proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = proc.stdout.readline()
            try:
                assert line.startswith("serving "), (argv, line, proc.stderr.read() if proc.poll() is not None else "")
                port = line.split("http://127.0.0.1:")[1].split("/")[0]
                code = client_block.replace("8000", port)
                c = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                                   timeout=300)
                assert c.returncode == 0, c.stderr[-2000:]
                assert "'k_latent': 2" in c.stdout and "reads_as" in c.stdout
            finally:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "shut down: 1 requests served" in out and "Traceback" not in err
            ran += 1
    assert ran >= 2
