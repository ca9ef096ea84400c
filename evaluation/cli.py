"""`medlvr evaluate --config FILE [--out DIR] [--limit N]` and `medlvr evaluate-merge --config FILE`.

Data parallel: `torchrun --nproc-per-node N -m evaluation.cli --config FILE` (or the `medlvr` entry point under
torchrun): each rank generates its shard, rank 0 merges the rank files and writes the report.
"""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_evaluate(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from medlvr.evaluation.config import EvalConfig
    from medlvr.evaluation.runs import evaluate

    cfg = EvalConfig.from_yaml(args.config, out_dir=args.out, limit=args.limit)
    res = evaluate(cfg, progress=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    if "report_md" in res:
        print(f"report: {res['report_md']}\nreport: {res['report_html']}")
    return 0


def _cmd_merge(args) -> int:
    from medlvr.evaluation.config import EvalConfig
    from medlvr.evaluation.runs import efficiency_manifest, load_all, merge_all, plan_jobs

    cfg = EvalConfig.from_yaml(args.config, out_dir=args.out)
    jobs = plan_jobs(cfg, efficiency_manifest(cfg, load_all(cfg)))
    merge_all(cfg, jobs, args.world_size)
    print(f"merged {len(jobs)} prediction files from {args.world_size} ranks under {cfg.out_dir}/predictions")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="run benchmark inference and write the evaluation report")
    p.add_argument("--config", required=True, help="evaluation YAML (see configs/eval_sample.yaml)")
    p.add_argument("--out", default=None, help="override out_dir")
    p.add_argument("--limit", type=int, default=None, help="at most N samples per benchmark (smoke runs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_cmd_evaluate)
    m = subparsers.add_parser("evaluate-merge", help="merge the per-rank prediction files of a sharded run")
    m.add_argument("--config", required=True)
    m.add_argument("--out", default=None)
    m.add_argument("--world-size", type=int, required=True)
    m.set_defaults(fn=_cmd_merge)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="medlvr-evaluate")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("evaluate", "evaluate-merge"):
        argv = ["evaluate", *argv]
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
