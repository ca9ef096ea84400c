"""The `medlvr` command line. Subcommands stay thin: they parse arguments and call the libraries.

    medlvr catalog [--json]
    medlvr sample-data OUT_DIR [--datasets ID ...]
    medlvr ingest --data-root DIR --out DIR [--datasets ID ...] [--workers N] [--config FILE]
    medlvr build-corpus --data-root DIR --out DIR [--qa-backend template|transformers|openai] [--workers N]
    medlvr demo [--dagster-home DIR] [--force]   the main job: the whole asset graph through Dagster
"""

from __future__ import annotations

import argparse
import importlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from corpus.catalog import CatalogError, load_catalog, select


def _cmd_catalog(args) -> int:
    from corpus.adapters import ADAPTERS

    cat = load_catalog()
    if args.json:
        rows = [{"id": s.id, "name": s.name, "modality": s.modality, "body_region": s.body_region,
                 "adapter": s.adapter, "labels": s.labels, "layout": list(s.layout), "licence": s.licence,
                 "citation": s.citation, "homepage": s.homepage,
                 "official_split": s.official_split, "patient_key": s.patient_key} for s in cat.values()]
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'id':<16} {'modality':<11} {'adapter':<24} {'labels':>6}  name")
    for s in cat.values():
        print(f"{s.id:<16} {s.modality:<11} {s.adapter:<24} {len(s.labels):>6}  {s.name}")
    mods = sorted({s.modality for s in cat.values()})
    print(f"\n{len(cat)} datasets, {len(mods)} modalities, {len({s.adapter for s in cat.values()})} of "
          f"{len(ADAPTERS)} adapters in use")
    return 0


def _cmd_sample_data(args) -> int:
    from corpus.sample_data import write_samples

    t0 = time.perf_counter()
    counts = write_samples(Path(args.out_dir), args.datasets, seed=args.seed)
    print(f"wrote {len(counts)} sample datasets ({sum(counts.values())} truth records) to {args.out_dir} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


def print_summary(summaries, file=None) -> None:
    file = file or sys.stdout
    head = f"{'dataset':<16} {'modality':<11} {'records':>7} {'rejected':>8} {'images':>7} {'ROIs':>7} {'ROI rej':>7} {'s':>6}"
    print(head, file=file)
    print("-" * len(head), file=file)
    tot = [0] * 5
    for s in summaries:
        vals = (s.records_in, s.records_rejected, s.images_out, s.rois_out, s.rois_rejected)
        tot = [a + b for a, b in zip(tot, vals)]
        print(f"{s.dataset:<16} {s.modality:<11} {vals[0]:>7} {vals[1]:>8} {vals[2]:>7} {vals[3]:>7} {vals[4]:>7} "
              f"{s.seconds:>6.1f}", file=file)
        if s.layout_missing:
            print(f"  ! layout: nothing matches {s.layout_missing}", file=file)
    print("-" * len(head), file=file)
    print(f"{'total':<28} {tot[0]:>7} {tot[1]:>8} {tot[2]:>7} {tot[3]:>7} {tot[4]:>7}", file=file)


def run_ingest(data_root: Path, out: Path, datasets, cfg, progress: bool = True):
    from corpus.ingest import DatasetMissing, dataset_root, ingest_dataset

    summaries, missing = [], []
    specs = select(datasets)
    for spec in specs:
        root = dataset_root(data_root, spec)
        try:
            summaries.append(ingest_dataset(spec, root, out, cfg, progress=progress))
        except DatasetMissing as e:
            missing.append(str(e))
    return summaries, missing


def _cmd_ingest(args) -> int:
    from corpus.ingest import IngestConfig

    cfg = IngestConfig.from_yaml(args.config) if args.config else IngestConfig()
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, workers=args.workers)
    summaries, missing = run_ingest(Path(args.data_root), Path(args.out), args.datasets, cfg, progress=not args.quiet)
    print_summary(summaries)
    for m in missing:
        print(f"skipped: {m}", file=sys.stderr)
    # Asking for a dataset by name that is not there is an error; a partial data root is not.
    return 1 if (missing and args.datasets) or not summaries else 0


def _cmd_build_corpus(args) -> int:
    from corpus.build import BuildConfig, build_corpus

    cfg = BuildConfig.from_yaml(args.config) if args.config else BuildConfig()
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, workers=args.workers))
    if args.qa_backend:
        cfg = dataclasses.replace(cfg, generator={**cfg.generator, "backend": args.qa_backend})
    report = build_corpus(Path(args.data_root), Path(args.out), cfg, args.datasets, progress=not args.quiet)
    print_build_report(report)
    return 0


def print_build_report(report: dict, file=None) -> None:
    file = file or sys.stdout
    qa = report.get("qa", {})
    dd, dc, sp = report["dedup"], report["decontamination"], report["splits"]
    print(f"QA pairs: {sum(qa.values())} from {dd['images']} images of {len(report['ingest'])} datasets", file=file)
    print(f"duplicates: {dd['images_in_duplicate_groups']} images in {dd['groups_with_duplicates']} groups; "
          f"decontamination removed {dc['removed_images']} images", file=file)
    print(f"images per split: {json.dumps(sp['per_split'])}; {sp['moved']} images moved to keep groups together",
          file=file)
    gen = report.get("generation", {})
    if gen:
        print("generated text: " + ", ".join(f"{k}={v}" for k, v in gen.items() if ":" not in k), file=file)
    print(f"shards: {report['shards']}  card: {report['card']}  ({report['seconds']}s)", file=file)


def _cmd_demo(args) -> int:
    """The main job: the whole asset graph materialised through Dagster (pipelines/main_job.py)."""
    from corpus.ingest import DatasetSummary
    from pipelines.main_job import run_main

    home = Path(args.dagster_home or os.environ.get("DAGSTER_HOME") or Path.cwd() / "pipelines" / "dagster_home")
    print(f"Dagster instance: {home.resolve()} (browse it afterwards with `make dagster-dev`)")
    res = run_main(home, args.datasets, force=args.force)
    corpus = Path(res["home"]) / "corpus"
    summaries = [DatasetSummary(**json.loads(p.read_text())) for p in sorted(corpus.glob("ingest/*/summary.json"))
                 if not p.parent.name.startswith(".")]
    print()
    print_summary(summaries)
    from corpus.shards import MANIFEST_NAME

    manifest = json.loads((corpus / "shards" / MANIFEST_NAME).read_text())
    print(f"\nQA pairs: {manifest['rows']} in {len(manifest['shards'])} shards; per split "
          f"{json.dumps(manifest['counts']['split'])}; decontamination removed "
          f"{manifest['decontamination'].get('removed_images', 0)} images")
    print(f"steps run: {len(res['ran'])}, reused (up to date): {len(res['reused'])}, failed: {len(res['failed'])}")
    print(f"corpus card: {corpus / 'card' / 'README.md'}")
    print(f"evaluation report: {res['report']}")
    print(f"done in {res['seconds']}s")
    return 1 if res["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medlvr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("catalog", help="list the dataset catalog")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=_cmd_catalog)
    s = sub.add_parser("sample-data", help="write miniature sample datasets in their native formats")
    s.add_argument("out_dir")
    s.add_argument("--datasets", nargs="+")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_sample_data)
    i = sub.add_parser("ingest", help="normalise images and ROI boxes into Parquet tables")
    i.add_argument("--data-root", required=True, help="folder with one sub-folder per dataset id")
    i.add_argument("--out", required=True)
    i.add_argument("--datasets", nargs="+")
    i.add_argument("--workers", type=int)
    i.add_argument("--config", help="YAML with IngestConfig fields (normalise, slices, workers, ...)")
    i.add_argument("--quiet", action="store_true", help="no progress bars")
    i.set_defaults(fn=_cmd_ingest)
    b = sub.add_parser("build-corpus", help="ingest, generate QA-box pairs, dedup, split, decontaminate, shard")
    b.add_argument("--data-root", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--datasets", nargs="+")
    b.add_argument("--qa-backend", choices=["template", "transformers", "openai"])
    b.add_argument("--workers", type=int)
    b.add_argument("--config", help="YAML with BuildConfig fields (ingest, qa, generator, benchmark_roots, ...)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(fn=_cmd_build_corpus)
    for module in ("training.cli", "evaluation.cli"):  # each package registers its own subcommands
        importlib.import_module(module).register(sub)
    d = sub.add_parser("demo", help="the main job: the whole asset graph through Dagster, on the bundled sample data")
    d.add_argument("--dagster-home", help="Dagster instance folder (default: $DAGSTER_HOME, else ./pipelines/dagster_home)")
    d.add_argument("--datasets", nargs="+", help="a subset of the catalog (default: all 31)")
    d.add_argument("--force", action="store_true", help="rerun every step even if it is up to date")
    d.set_defaults(fn=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (CatalogError, KeyError, FileNotFoundError) as e:
        print(f"medlvr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
