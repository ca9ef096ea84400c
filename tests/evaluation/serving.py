"""A real `medlvr serve` process for tests: the installed console script on 127.0.0.1, a free port, stopped with
SIGTERM. The session-wide server on a tiny checkpoint is the `server` fixture (tests/evaluation/conftest.py), shared
by test_serve.py and test_harnesses.py."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import openai

MEDLVR = Path(sys.executable).parent / "medlvr"
SERVED_K = 3  # the latent budget of the served tiny checkpoint


class Server:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, **kw)

    def health(self) -> dict:
        return httpx2.get(f"http://127.0.0.1:{self.port}/health", timeout=10).json()

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err


def start_server(ckpt: Path, *args: str, cwd: Path) -> Server:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(MEDLVR), "serve", "--model", str(ckpt), "--port", "0", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # printed once the model is loaded and the port is bound
    if "serving" not in line:
        proc.kill()
        raise AssertionError(f"medlvr serve did not start: {line}{proc.stderr.read()}")
    return Server(proc, int(line.split("http://127.0.0.1:")[1].split("/")[0]))
