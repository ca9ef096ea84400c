"""`medlvr` subcommands of the corpus package (the root parser is `medlvr.pipelines.cli`, which calls `register`).
Subcommands stay thin: they parse arguments and call the library.

    medlvr catalog [--json]
    medlvr catalog check --data-root DIR [--datasets ID ...] [--max-records N] [--config FILE] [--set KEY=VALUE]
    medlvr sample-data OUT_DIR [--datasets ID ...] [--scale miniature|real]
    medlvr ingest --data-root DIR --out DIR [--datasets ID ...] [--workers N] [--config FILE] [--set KEY=VALUE]
    medlvr build-corpus --data-root DIR --out DIR [--qa-backend template|transformers|openai] [--workers N]
                        [--config FILE] [--set KEY=VALUE]

Which datasets a run takes (`datasets_to_run`): those named with `--datasets`, each of which must exist (an
absent one is an error line, and nothing runs); without `--datasets`, the ones the data root holds, the absent
ones listed on one "skipped N datasets ..." line (a missing data root, or one with no dataset folder, is one error
line). A dataset that yields no image at all fails the run (exit 1) with one line: its counts and first reason.
Datasets are isolated: one whose ingest raises is one error line (`ingest.dataset_failure`), the others complete,
and the run exits 1.

`--config`/`--set` load through `medlvr.corpus.config` (unknown keys are errors); `--workers` and `--qa-backend`
are shortcuts for `--set ingest.workers=N` / `--set generator.backend=NAME` (applied after the other overrides).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.config import add_config_arguments, load_config
from medlvr.corpus import layout

# The readers, the build and the sample writers are imported by the commands that run them: `medlvr` itself starts
# in a fraction of a second (an argument error of any subcommand is reported before they load).


def _cmd_catalog(args) -> int:
    from medlvr.corpus.adapters import ADAPTERS

    cat = load_catalog()
    if args.json:
        rows = [{"id": s.id, "name": s.name, "modality": s.modality, "body_region": s.body_region,
                 "adapter": s.adapter, "labels": s.labels, "ignored_labels": s.ignored_labels,
                 "layout": list(s.layout), "licence": s.licence,
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


def _cmd_catalog_check(args) -> int:
    """One line per fact and per problem ('!' first) for each dataset found; exit 1 when one would lose objects
    (a layout glob matching nothing, a label neither mapped nor ignored, a record rejected, an object lost)."""
    from medlvr.corpus.catalog_check import check_dataset
    from medlvr.corpus.ingest import IngestConfig, dataset_root

    cfg = load_config(IngestConfig, args.config, args.overrides)
    ids = datasets_to_run(Path(args.data_root), args.datasets)
    if ids is None:
        return 1
    cat, losing = load_catalog(), []
    for ds in ids:
        chk = check_dataset(cat[ds], dataset_root(Path(args.data_root), cat[ds]), cfg, args.max_records)
        for line in chk.lines():
            print(line)
        if chk.problems:
            losing.append(ds)
    if losing:
        print(f"medlvr: error: {len(losing)} dataset(s) would lose annotation objects: {', '.join(losing)}",
              file=sys.stderr)
        return 1
    return 0


def _cmd_sample_data(args) -> int:
    from medlvr.corpus.sample_data import write_samples

    t0 = time.perf_counter()
    counts = write_samples(Path(args.out_dir), args.datasets, seed=args.seed, scale=args.scale)
    print(f"wrote {len(counts)} {args.scale}-scale sample datasets ({sum(counts.values())} truth records) to {args.out_dir} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


OBJECT_REASONS_SHOWN = 3  # object reject reasons printed under a dataset's row, the most common first


def print_summary(summaries, file=None) -> None:
    """The ingest table: records, images, ROI rows, and annotation objects (found, written as boxes, rejected)
    with the most common reasons objects were rejected for, and a warning line where an object was lost."""
    from medlvr.corpus.ingest import OBJECT_LOST, OBJECT_WRITTEN

    file = file or sys.stdout
    head = (f"{'dataset':<16} {'modality':<11} {'records':>7} {'rejected':>8} {'images':>7} {'ROIs':>7} "
            f"{'ROI rej':>7} {'objects':>7} {'obj out':>7} {'obj rej':>7} {'s':>6}")
    print(head, file=file)
    print("-" * len(head), file=file)
    tot = [0] * 8
    for s in summaries:
        vals = (s.records_in, s.records_rejected, s.images_out, s.rois_out, s.rois_rejected, s.objects_in,
                s.objects_out, s.objects_rejected)
        tot = [a + b for a, b in zip(tot, vals)]
        print(f"{s.dataset:<16} {s.modality:<11} " + " ".join(f"{v:>{w}}" for v, w in zip(vals, WIDTHS)) +
              f" {s.seconds:>6.1f}", file=file)
        rejected = [(k, n) for k, n in s.object_outcomes.items() if k != OBJECT_WRITTEN and k != OBJECT_LOST]
        for reason, n in rejected[:OBJECT_REASONS_SHOWN]:
            print(f"  objects rejected: {n:>6}  {reason}", file=file)
        if len(rejected) > OBJECT_REASONS_SHOWN:
            print(f"  objects rejected: {sum(n for _, n in rejected[OBJECT_REASONS_SHOWN:]):>6}  "
                  f"({len(rejected) - OBJECT_REASONS_SHOWN} other reasons: rejects.parquet)", file=file)
        if s.objects_lost:
            print(f"  ! {s.objects_lost} objects with neither a box nor a reject row (a bug), e.g. "
                  f"{s.objects_lost_examples[0] if s.objects_lost_examples else '?'}", file=file)
        if s.layout_missing:
            print(f"  ! layout: nothing matches {s.layout_missing}", file=file)
    print("-" * len(head), file=file)
    print(f"{'total':<28} " + " ".join(f"{v:>{w}}" for v, w in zip(tot, WIDTHS)), file=file)


WIDTHS = (7, 8, 7, 7, 7, 7, 7, 7)


def datasets_to_run(data_root: Path, requested: list[str] | None) -> list[str] | None:
    """The dataset ids a run ingests, or None (after printing why, one line each) when it must not start.

    A dataset named with --datasets but absent is an error (one line per such dataset). Without --datasets the
    run takes what the data root holds: a missing data root is one error line, a data root with no dataset
    folder another, and the absent datasets of a partial root are listed on one line, not one line each."""
    from medlvr.corpus.ingest import locate_datasets

    present, absent = locate_datasets(data_root, requested)
    if requested and absent:
        for spec, root in absent:
            print(f"medlvr: error: dataset {spec.id}: {root} does not exist (or set MEDLVR_ROOT_{spec.id.upper()})",
                  file=sys.stderr)
        return None
    if not present:
        why = "does not exist" if not data_root.is_dir() else "holds no dataset folder (one per id: `medlvr catalog`)"
        print(f"medlvr: error: data root {data_root} {why}", file=sys.stderr)
        return None
    if absent:
        print(f"skipped {len(absent)} datasets not under {data_root}: {', '.join(s.id for s, _ in absent)}",
              file=sys.stderr)
    return [s.id for s in present]


def report_empty_datasets(summaries) -> int:
    """Exit status of a run: 1 (with one line each) if a dataset yielded no image at all."""
    from medlvr.corpus.ingest import empty_dataset_reason

    empty = [r for r in map(empty_dataset_reason, summaries) if r]
    for line in empty:
        print(f"medlvr: error: {line}", file=sys.stderr)
    return 1 if empty else 0


def _cmd_ingest(args) -> int:
    from medlvr.corpus.ingest import IngestConfig, run_ingest

    shortcuts = [f"workers={args.workers}"] if args.workers is not None else []
    cfg = load_config(IngestConfig, args.config, [*args.overrides, *shortcuts])
    ids = datasets_to_run(Path(args.data_root), args.datasets)
    if ids is None:
        return 1
    summaries, failures = run_ingest(Path(args.data_root), Path(args.out), ids, cfg, progress=not args.quiet)
    print_summary(summaries)
    for m in failures:  # a dataset whose run raised, or whose folder was removed while the run was going
        print(f"medlvr: error: {m}", file=sys.stderr)
    empty = report_empty_datasets(summaries)
    return 1 if failures else empty


def _cmd_build_corpus(args) -> int:
    from medlvr.corpus.build import BuildConfig, build_corpus
    from medlvr.corpus.ingest import DatasetSummary

    shortcuts = [f"ingest.workers={args.workers}"] if args.workers is not None else []
    shortcuts += [f"generator.backend={args.qa_backend}"] if args.qa_backend else []
    cfg = load_config(BuildConfig, args.config, [*args.overrides, *shortcuts])
    ids = datasets_to_run(Path(args.data_root), args.datasets)
    if ids is None:
        return 1
    report = build_corpus(Path(args.data_root), Path(args.out), cfg, ids, progress=not args.quiet)
    print_build_report(report)
    for m in report["missing"] + report["failed"]:
        print(f"medlvr: error: {m}", file=sys.stderr)
    failed = {line.split(":", 1)[0] for line in report["failed"]}  # their summaries may be of an earlier run
    summaries = [DatasetSummary(**json.loads((Path(args.out) / layout.ingest_summary(d)).read_text())) for d in ids
                 if d not in failed and (Path(args.out) / layout.ingest_summary(d)).exists()]
    empty = report_empty_datasets(summaries)
    return 1 if report["missing"] or report["failed"] else empty


def print_build_report(report: dict, file=None) -> None:
    file = file or sys.stdout
    qa = report.get("qa", {})
    dd, dc, sp = report["dedup"], report["decontamination"], report["splits"]
    print(f"QA pairs: {sum(qa.values())} from {dd['images']} images of {len(report['ingest'])} datasets", file=file)
    print(f"duplicates: {dd['images_in_duplicate_groups']} images in {dd['groups_with_duplicates']} groups; "
          f"decontamination removed {dc['removed_images']} images", file=file)
    print(f"images per split: {counts_text(sp['per_split'])}; {sp['moved']} images moved to keep duplicate and "
          "patient groups in one split", file=file)
    gen = {k: v for k, v in report.get("generation", {}).items() if ":" not in k}
    if gen:
        print(f"generated text: {counts_text(gen)}", file=file)
    print(f"shards: {report['shards']}  card: {report['card']}  ({report['seconds']}s)", file=file)


def counts_text(counts: dict) -> str:
    """`{"train": 60, "val": 8}` as a person reads it: `train 60, val 8`."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) or "none"


def register(sub) -> None:
    """Add the corpus subcommands to the root parser's subparsers."""
    c = sub.add_parser("catalog", help="list the dataset catalog")
    c.add_argument("--json", action="store_true", help="print the catalog as a JSON list instead of a table")
    c.set_defaults(fn=_cmd_catalog)
    cs = c.add_subparsers(dest="catalog_command", metavar="check")
    k = cs.add_parser("check", help="read a download as ingest would, write nothing, and report per dataset what "
                                    "would be lost (exit 1 if anything would)")
    k.add_argument("--data-root", required=True, help="folder with one sub-folder per dataset id")
    k.add_argument("--datasets", nargs="+", metavar="ID",
                   help="only these catalog ids (default: every dataset found under --data-root)")
    k.add_argument("--max-records", type=int, metavar="N",
                   help="load only the first N records of each dataset (default: all; the layout and file "
                        "checks always see every file)")
    add_config_arguments(k, "IngestConfig fields (the slices and normalise settings the build will use)",
                         "slices.max_slices_per_volume=20", required=False)
    k.set_defaults(fn=_cmd_catalog_check)
    s = sub.add_parser("sample-data", help="write miniature sample datasets in their native formats")
    s.add_argument("out_dir", help="folder to write <out_dir>/<dataset id>/ into (created if missing)")
    s.add_argument("--datasets", nargs="+", metavar="ID", help="only these catalog ids (default: every dataset)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the synthetic images and boxes (default 0)")
    s.add_argument("--scale", choices=["miniature", "real"], default="miniature",
                   help="miniature (default: small images, seconds) or real: every image and volume at the real "
                        "release's size, dtype, bit depth and format (the catalog's real_size; GBs, minutes)")
    s.set_defaults(fn=_cmd_sample_data)
    i = sub.add_parser("ingest", help="normalise images and ROI boxes into Parquet tables")
    i.add_argument("--data-root", required=True, help="folder with one sub-folder per dataset id")
    i.add_argument("--out", required=True, help="output folder: <out>/<dataset id>/ Parquet tables and summary")
    i.add_argument("--datasets", nargs="+", metavar="ID",
                   help="only these catalog ids (default: every dataset found under --data-root)")
    i.add_argument("--workers", type=int, help="worker processes (default: the config's `workers`)")
    add_config_arguments(i, "IngestConfig fields: normalise, slices, workers, ...", "normalise.max_side=256",
                         required=False)
    i.add_argument("--quiet", action="store_true", help="no progress bars")
    i.set_defaults(fn=_cmd_ingest)
    b = sub.add_parser("build-corpus", help="ingest, generate QA-box pairs, dedup, split, decontaminate, shard")
    b.add_argument("--data-root", required=True, help="folder with one sub-folder per dataset id")
    b.add_argument("--out", required=True, help="output folder: ingest/, qa/, shards/ and card/ go under it")
    b.add_argument("--datasets", nargs="+", metavar="ID",
                   help="only these catalog ids (default: every dataset found under --data-root)")
    b.add_argument("--qa-backend", choices=["template", "transformers", "openai"],
                   help="QA text generator (shorthand for --set generator.backend=...; default: the config's)")
    b.add_argument("--workers", type=int, help="ingest worker processes (default: the config's)")
    add_config_arguments(b, "BuildConfig fields: ingest, qa, generator, benchmark_roots, ...",
                         "generator.backend=openai", required=False)
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(fn=_cmd_build_corpus)
