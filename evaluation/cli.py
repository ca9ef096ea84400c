"""`medlvr evaluate --config FILE [--set key=value ...] [--out DIR] [--limit N]`, `medlvr evaluate-merge` and
`medlvr ask --model CKPT --image FILE --question TEXT [--k K] [--slice N] [--axis-order ORDER] [--window NAME]
[--out DIR]`.

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


def _register_ask(subparsers) -> None:
    a = subparsers.add_parser(
        "ask", help="one question on one image (PNG/JPEG, DICOM, NIfTI slice): the answer, the latent segment and "
                    "an overlay of where each latent state points")
    a.add_argument("--model", required=True, metavar="CKPT",
                   help="checkpoint folder (its model/ or a run's out_dir: the newest checkpoint)")
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
