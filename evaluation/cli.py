"""`medlvr evaluate --config FILE [--set key=value ...] [--out DIR] [--limit N]`, `medlvr evaluate-merge` and
`medlvr ask --model CKPT --image FILE --question TEXT [--k K] [--slice N] [--axis-order ORDER] [--window NAME]
[--out DIR]` and `medlvr serve --model CKPT [--host H] [--port N] [--max-batch B] ...` (an OpenAI-compatible server
with the latent loop: `medlvr.evaluation.serve_app`).

`--out DIR` and `--limit N` are shorthands for `--set out_dir=DIR` and `--set limit=N`. A config error, or a
benchmark error (a malformed benchmark file; an image that is missing, truncated or not an image, named by its
file relative to the benchmark root and its record id), reaches the root CLI: one line `medlvr: error: ...`,
exit 2, no traceback.

Data parallel: `torchrun --nproc-per-node N -m medlvr.evaluation.cli --config FILE` (or the `medlvr` entry point under
torchrun): each rank generates its shard, rank 0 merges the rank files and writes the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medlvr.corpus.config import ConfigError, add_config_arguments
from medlvr.corpus.evalsets.base import BenchmarkError


def _cmd_evaluate(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # imported here: the offline switches above must be set before transformers loads, and `medlvr --help` should
    # not pay for torch
    from medlvr.evaluation.config import load_eval_config
    from medlvr.evaluation.runs import evaluate

    from transformers.utils import logging as hf_logging

    cfg = load_eval_config(args.config, _overrides(args))
    hf_logging.disable_progress_bar()  # one bar per model (ours), not one per weight file loaded
    res = evaluate(cfg, progress=None, bars=not args.quiet)
    if "report_md" in res:
        print(f"report: {res['report_md']}\nreport: {res['report_html']}")
        print(f"results: {res['results_json']}")
    for job, st in res.get("failed", {}).items():
        print(f"medlvr: error: {job}: {st['failed']} endpoint requests failed ({st['last_error']}); rerun the same "
              "command to ask only those again", file=sys.stderr)
    return 1 if res.get("failed") else 0


def _cmd_merge(args) -> int:
    from medlvr.evaluation.config import load_eval_config  # torch only when the command runs (as above)
    from medlvr.evaluation.runs import efficiency_manifest, load_all, merge_all, plan_jobs

    cfg = load_eval_config(args.config, _overrides(args))
    jobs = plan_jobs(cfg, efficiency_manifest(cfg, load_all(cfg)))
    merge_all(cfg, jobs, args.world_size)
    print(f"merged {len(jobs)} prediction files from {args.world_size} ranks under {cfg.out_dir}/predictions")
    return 0


def _cmd_ask(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # ask.py imports no torch: every argument and file is checked first (one line, exit 2, in well under a
    # second); torch and transformers load only for a question that will be asked
    from medlvr.evaluation.ask import AskError, ask, check_question, format_result, read_image, resolve_checkpoint

    try:
        check_question(args.question, args.k)
        resolve_checkpoint(args.model)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise AskError(f"--out {args.out} is a file, not a folder")
        image = read_image(args.image, args.slice, args.window, args.axis_order)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one answer, no "Loading weights" bar around it
        hf_logging.set_verbosity_error()
        name = Path(args.image).name.split(".")[0] or "ask"
        res = ask(args.model, image, args.question, k_latent=args.k, out_dir=args.out, name=name)
    except AskError as e:
        print(f"medlvr ask: error: {e}", file=sys.stderr)
        return 2
    print(format_result(res, Path(args.image).name))
    return 0


def _cmd_serve(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import signal
    import socket

    import uvicorn
    from transformers.utils import logging as hf_logging

    from medlvr.evaluation.ask import AskError, resolve_checkpoint
    from medlvr.evaluation.serve_app import build_app
    from medlvr.evaluation.serve_backend import LatentTransformersBackend

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                        ("--max-prompt-tokens", args.max_prompt_tokens), ("--max-tokens", args.max_tokens)):
        if value < 1:
            print(f"medlvr serve: error: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    media = Path(args.allowed_local_media_path).resolve() if args.allowed_local_media_path else None
    if media is not None and not media.is_dir():
        print(f"medlvr serve: error: --allowed-local-media-path {args.allowed_local_media_path}: no such folder",
              file=sys.stderr)
        return 2
    try:
        folder = str(resolve_checkpoint(args.model))
        backend = LatentTransformersBackend(folder, args.served_model_name or args.model, k_latent=args.k,
                                            max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens,
                                            dtype=args.dtype, device=args.device)
    except AskError as e:
        print(f"medlvr serve: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"medlvr serve: error: --model {args.model}: cannot load the checkpoint: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 2
    try:  # bound here so that --port 0 (a free port) can be printed before serving
        sock = socket.create_server((args.host, args.port), reuse_port=False)
    except OSError as e:
        print(f"medlvr serve: error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    app = build_app(backend, max_batch=args.max_batch, max_queue=args.max_queue, batch_wait_s=args.batch_wait_ms / 1000,
                    request_timeout_s=args.request_timeout, allowed_media=media)
    host, port = sock.getsockname()[:2]
    print(f"serving {folder} as {backend.model_id!r} (K = {backend.k}) on http://{host}:{port}/v1 "
          f"(max batch {args.max_batch}, queue {args.max_queue})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=args.request_timeout)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully, under the handler that was
    # there before it; a no-op one lets the command finish (print its summary, exit 0) instead of dying by it
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
    st = app.state.stats
    print(f"shut down: {st.served} requests served in {st.batches} batches, {st.rejected} rejected, "
          f"{st.timed_out} timed out, {st.disconnected} disconnected", flush=True)
    return 0


def _overrides(args) -> list[str]:
    """The `--set` overrides, after the `--out` / `--limit` shorthands (an explicit --set wins)."""
    short = [f"out_dir={args.out}"] if args.out else []
    if getattr(args, "limit", None) is not None:
        short.append(f"limit={args.limit}")
    return [*short, *args.overrides]


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="run benchmark inference and write the evaluation report")
    add_config_arguments(p, "configs/eval_sample.yaml, configs/eval_demo.yaml", "decode.batch_size=4")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (shorthand for --set out_dir=DIR)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N samples per benchmark (smoke runs; shorthand for --set limit=N)")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.set_defaults(fn=_cmd_evaluate)
    m = subparsers.add_parser("evaluate-merge", help="merge the per-rank prediction files of a sharded run")
    add_config_arguments(m, "the config of the sharded run", "out_dir=eval_out")
    m.add_argument("--out", default=None, metavar="DIR",
                   help="the sharded run's output folder (shorthand for --set out_dir=DIR)")
    m.add_argument("--world-size", type=int, required=True, metavar="N",
                   help="number of ranks the sharded run had (the N of its .rankR-of-N.jsonl files)")
    m.set_defaults(fn=_cmd_merge)
    _register_ask(subparsers)
    _register_serve(subparsers)


def _add_model_argument(parser) -> None:
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="checkpoint folder (its model/ or a run's out_dir: the newest checkpoint)")


def _register_serve(subparsers) -> None:
    s = subparsers.add_parser(
        "serve", help="an OpenAI-compatible chat server (/v1/chat/completions, /v1/models) answering with the "
                      "latent loop, concurrent requests batched")
    _add_model_argument(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, metavar="N", help="port (default 8000; 0: a free one, printed)")
    s.add_argument("--max-batch", type=int, default=8, metavar="B", help="requests decoded together (default 8)")
    s.add_argument("--max-queue", type=int, default=64, metavar="Q",
                   help="requests waiting at most; more are answered 429 (default 64)")
    s.add_argument("--batch-wait-ms", type=float, default=25.0, metavar="MS",
                   help="before decoding, wait while requests keep arriving this close together (at most 5x; default 25)")
    s.add_argument("--request-timeout", type=float, default=300.0, metavar="S",
                   help="seconds a request may wait and decode before a 504 (default 300)")
    s.add_argument("--max-prompt-tokens", type=int, default=8192, metavar="N",
                   help="longer prompts are refused with a 400 (default 8192)")
    s.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="answer tokens per request at most (the latent segment comes on top; default 512)")
    s.add_argument("--k", type=int, default=None, metavar="K", help="latent steps (default: the checkpoint's K)")
    s.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model id in /v1/models and requests (default: --model as given)")
    s.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                   help="image parts may name local files under DIR (file:// or absolute paths), as in vLLM")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="weights' dtype (default float32; bfloat16 on a GPU)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    s.set_defaults(fn=_cmd_serve)


def _register_ask(subparsers) -> None:
    a = subparsers.add_parser(
        "ask", help="one question on one image (PNG/JPEG, DICOM, NIfTI slice): the answer, the latent segment and "
                    "an overlay of where each latent state points")
    _add_model_argument(a)
    a.add_argument("--image", required=True, metavar="FILE", help="PNG/JPEG, DICOM (.dcm or DICM header) or NIfTI")
    a.add_argument("--question", required=True, metavar="TEXT", help="the question, sent as typed after the image")
    a.add_argument("--k", type=int, default=None, metavar="K",
                   help="latent steps (default: the checkpoint's K from medlvr_latent.json, else 0)")
    a.add_argument("--slice", type=int, default=None, metavar="N",
                   help="NIfTI slice along Z (default: the middle one) or multi-frame DICOM frame")
    a.add_argument("--axis-order", default="XYZ", metavar="ORDER",
                   help="a NIfTI array's axes on disk, as the catalog's axis_order (default XYZ); a 3-D file's affine "
                        "names its axes, as ingest reads it")
    a.add_argument("--window", default=None, metavar="NAME",
                   help="read CT values in HU with this preset window (abdomen, lung, bone, brain, ...)")
    a.add_argument("--out", default=".", metavar="DIR",
                   help="folder for the overlay PNG <image name>_latents.png (default: the current folder)")
    a.set_defaults(fn=_cmd_ask)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="medlvr-evaluate")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("evaluate", "evaluate-merge"):
        argv = ["evaluate", *argv]
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, BenchmarkError) as e:  # as the root CLI does: one line, no traceback
        print(f"medlvr: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(exc: BaseException) -> str:
    """An error message on one line (a message listing several problems joins them with "; ")."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())


if __name__ == "__main__":
    raise SystemExit(main())
