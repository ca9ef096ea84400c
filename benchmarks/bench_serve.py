"""`medlvr serve` throughput (issue 26 §2): requests/s with 8 concurrent clients, dynamic batching vs the same
server decoding one request at a time (`--max-batch 1`), measured in the same run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_serve.py [--clients 8] [--requests 4] [--k 8] [--max-tokens 24]
                                                      [--repeats 3] [--json FILE]
    python benchmarks/bench_serve.py --shape 7b --device cuda --dtype bfloat16 --json serve.json   # one GPU
                                                                                  # (benchmarks/gpu/run.sh)

Both servers are the installed console script (`medlvr serve --port 0`) on a random checkpoint of `--shape` (tiny;
3b / 7b: Qwen2.5-VL's shapes) saved to a temporary folder (default CPU, float32, OMP_NUM_THREADS=1; on a GPU both
servers hold the weights at once, 2 x 16.6 GB for 7b in bf16), called through the `openai` SDK by `--clients` threads, each
sending `--requests` requests one after another (a 64x80 PNG as a data URL and a question). The random model rarely
emits EOS, so each answer runs to --max-tokens (plus the K + 2 latent-segment positions). Rounds alternate between
the two servers; the figures are medians over --repeats rounds. Prints the load average before and after: the
machine may be shared.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx2  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402
from PIL import Image  # noqa: E402

MEDLVR = Path(sys.executable).parent / "medlvr"


def png_url(seed: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start(ckpt: Path, max_batch: int, device: str, dtype: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(MEDLVR), "serve", "--model", str(ckpt), "--port", "0", "--max-batch", str(max_batch),
                             "--device", device, "--dtype", dtype], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"medlvr serve did not start: {line}")
    return proc, "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split("/")[0] + "/v1"


def one_round(base_url: str, model: str, clients: int, requests: int, max_tokens: int) -> float:
    """Requests per second with `clients` threads each sending `requests` requests in turn."""
    urls = [png_url(s) for s in range(clients * requests)]
    errors: list[Exception] = []

    def client(c: int) -> None:
        api = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
        for r in range(requests):
            content = [{"type": "image_url", "image_url": {"url": urls[c * requests + r]}},
                       {"type": "text", "text": "Is there a mass in the left kidney?"}]
            try:
                api.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                            max_tokens=max_tokens)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[0]}")
    return clients * requests / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client per round")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", default="tiny", choices=("tiny", "3b", "7b"), help="the random model's shape")
    ap.add_argument("--device", default="cpu", help="the servers' --device (cpu, cuda)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE")
    args = ap.parse_args()

    import torch

    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import SHAPES, build_tiny

    load_before = os.getloadavg()
    print(f"load average before: {load_before}")
    with tempfile.TemporaryDirectory() as tmp:
        b = build_tiny(seed=0, cfg=SHAPES[args.shape], dtype=getattr(torch, args.dtype), device=args.device)
        ckpt = save_checkpoint(b.model, b.processor, Path(tmp) / "model", k_latent=args.k)
        del b  # the servers load their own copies
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        servers = {"batched": start(ckpt, args.clients, args.device, args.dtype),
                   "sequential": start(ckpt, 1, args.device, args.dtype)}
        try:
            for _, url in servers.values():  # warm-up: first requests pay for lazy imports
                one_round(url, str(ckpt), 2, 1, args.max_tokens)
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.repeats):
                for name, (_, url) in servers.items():
                    rates[name].append(one_round(url, str(ckpt), args.clients, args.requests, args.max_tokens))
            sizes = httpx2.get(servers["batched"][1].removesuffix("/v1") + "/health", timeout=30).json()["batch_sizes"]
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=120)
    med = {name: statistics.median(v) for name, v in rates.items()}
    print(f"{args.clients} concurrent clients x {args.requests} requests, K = {args.k}, max_tokens {args.max_tokens}, "
          f"median of {args.repeats}")
    for name, v in rates.items():
        print(f"  {name:10s} (--max-batch {args.clients if name == 'batched' else 1}): {med[name]:.2f} requests/s  "
              f"(rounds: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"batched server: {len(sizes)} batches, mean size {statistics.mean(sizes):.2f}, max {max(sizes)}")
    print(f"batched / sequential: x{med['batched'] / med['sequential']:.2f}  (goal >= 3)")
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        figures = {"command": " ".join(sys.argv), "device": device, "shape": args.shape, "dtype": args.dtype,
                   "clients": args.clients, "requests": args.requests, "k_latent": args.k,
                   "max_tokens": args.max_tokens, "repeats": args.repeats,
                   "requests_per_s": {name: {"median": med[name], "rounds": v} for name, v in rates.items()},
                   "batch_sizes": sizes, "batched_over_sequential": med["batched"] / med["sequential"],
                   "load_average": {"before": load_before, "after": os.getloadavg()}}
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
