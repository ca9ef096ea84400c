"""Mechanism validation (docs/mechanism.md): does the latent segment carry the answer? Training variants FROM
SCRATCH on the synthetic grounding task (corpus/sample_data/synthetic_grounding.py), several seeds, one budget,
with the visual bottleneck and the text-blind prompt (training/bottleneck.py) and the causal latent diagnostics
(evaluation/latent_diagnostics.py): z-swap, zeroing, and the closed-mode segment / text / both swaps that say
which route carries the answer.

    python experiments/mechanism/mechanism.py --config configs/mechanism.yaml [--quick] [--set key.sub=value ...]

One command regenerates everything: the jobs (reused while their keys hold), `results` (JSON), the plots
`docs_dir/<prefix>_*.png` and the generated sections of `doc` (docs/mechanism.md).

The experiment is three modules beside this entry point, on the library's public functions:
* `mechanism_config.py`: defaults, the typed config shape, `--quick` / `--set`, the tiny model's shape;
* `mechanism_jobs.py`: data, each seed's init, stage 1 (ROI-SFT), stage 2 (RL), the evaluation; every cached
  product keyed by everything that determines it (config, model shape, code version);
* `mechanism_report.py`: aggregates over seeds, the goal per seed, plots, tables and the doc's numbers.

A variant = a stage-1 recipe (`stage1:`, through `medlvr.training.sft.recipe.train`) + a stage-2 RL algorithm
(`variants:`, through `medlvr.training.vlpo.trainer.train_vlpo`); `tasks:` are task variants (`lesion_cells`).
`python experiments/mechanism/attention.py` adds where the answer position attends to the results JSON.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the experiment's modules beside this file

from mechanism_config import ConfigError, load_config  # noqa: E402
from mechanism_jobs import code_version, run_jobs  # noqa: E402
from mechanism_report import build_results, write_doc  # noqa: E402
from medlvr.evaluation.latent_diagnostics import write_json  # noqa: E402  (atomic)


def _cpu_seconds() -> float:
    """user + sys of this process and of its waited-for children (the job workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_experiment(cfg: dict) -> dict:
    t0, c0, load0 = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    loads = []

    def log(line: str) -> None:
        loads.append(os.getloadavg()[0])
        print(line, flush=True)

    done = run_jobs(cfg, log)
    cost = {"jobs_run": sum(not d[6] for d in done), "jobs_reused": sum(d[6] for d in done),
            "load_average_start": list(load0), "load_average_mean_1min": sum(loads) / max(1, len(loads)),
            "load_average_end": list(os.getloadavg())}
    results = build_results(cfg, done, cost, code_version())
    cost["wall_seconds"], cost["cpu_seconds"] = time.perf_counter() - t0, _cpu_seconds() - c0
    results["wall_seconds"] = cost["wall_seconds"]
    if cfg["doc"]:
        write_doc(results, Path(cfg["doc"]))
    write_json(Path(cfg["results"]), results)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/mechanism/mechanism.py", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML (configs/mechanism.yaml); defaults when omitted")
    ap.add_argument("--quick", action="store_true", help="the config's reduced `quick:` settings (CI, a few minutes)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set sft.steps=100 (repeatable; values parsed as YAML)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, quick=args.quick, overrides=args.overrides)
    except ConfigError as e:  # one line, exit 2, as every medlvr command
        print(f"mechanism: error: {e}", file=sys.stderr)
        return 2
    res = run_experiment(cfg)
    print(res["table_md"])
    print(f"results: {cfg['results']}  plots: {', '.join(res['plots'])}  wall: {res['wall_seconds']:.0f}s  "
          f"CPU: {res['cost']['cpu_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
