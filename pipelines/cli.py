"""The `medlvr` command line: the root parser. Each package adds its own subcommands through `register(subparsers)`
(`medlvr.corpus.cli`, `medlvr.training.cli`, `medlvr.evaluation.cli`); this module sits on top of all of them and
adds `demo`, the main job.

    medlvr catalog | sample-data | ingest | build-corpus     corpus
    medlvr train-sft | train-vlpo                            training
    medlvr evaluate | evaluate-merge | ask | serve           evaluation
    medlvr demo [--dagster-home DIR] [--force]               the main job: the whole asset graph through Dagster
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
from pathlib import Path

from medlvr.corpus import cli as corpus_cli
from medlvr.corpus.catalog import CatalogError
from medlvr.corpus.catalog import select as select_datasets
from medlvr.corpus.config import ConfigError, did_you_mean
from medlvr.corpus.evalsets.base import BenchmarkError
from medlvr.corpus.kg.graph import KGError
from medlvr.evaluation import cli as evaluation_cli
from medlvr.evaluation.cli import one_line
from medlvr.training import cli as training_cli
from medlvr.training.checkpoints import CheckpointError


def _cmd_demo(args) -> int:
    """The main job: the whole asset graph materialised through Dagster (pipelines/main_job.py)."""
    from medlvr.corpus.ingest import DatasetSummary
    from medlvr.corpus.shards import MANIFEST_NAME
    from medlvr.pipelines.main_job import run_main  # imports Dagster: only when the main job runs

    if args.datasets:
        select_datasets(args.datasets)  # a mistyped id: one line with a did-you-mean, before Dagster starts
    home = Path(args.dagster_home or os.environ.get("DAGSTER_HOME") or Path.cwd() / "pipelines" / "dagster_home")
    print(f"Dagster instance: {home.resolve()} (browse it afterwards with `make dagster-dev`)")
    try:
        res = run_main(home, args.datasets, force=args.force)
    except RuntimeError as e:  # a failed stage: its step's error (a trainer's log tail and path) is printed above
        print(f"medlvr demo: {e}", file=sys.stderr)
        return 1
    corpus = Path(res["home"]) / "corpus"
    summaries = [DatasetSummary(**json.loads(p.read_text())) for p in sorted(corpus.glob("ingest/*/summary.json"))
                 if not p.parent.name.startswith(".")]
    print()
    corpus_cli.print_summary(summaries)
    manifest = json.loads((corpus / "shards" / MANIFEST_NAME).read_text())
    print(f"\nQA pairs: {manifest['rows']} in {len(manifest['shards'])} shards; per split "
          f"{corpus_cli.counts_text(manifest['counts']['split'])}; decontamination removed "
          f"{manifest['decontamination'].get('removed_images', 0)} images")
    print(f"steps run: {len(res['ran'])}, reused (up to date): {len(res['reused'])}, failed: {len(res['failed'])}")
    print(f"corpus card: {corpus / 'card' / 'README.md'}")
    print(f"evaluation report: {res['report']}")
    print(f"done in {res['seconds']}s")
    return 1 if res["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medlvr", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: list[tuple[str, list[str]]] = []
    for label, package_cli in (("corpus", corpus_cli), ("training", training_cli), ("evaluation", evaluation_cli)):
        before = set(sub.choices)
        package_cli.register(sub)  # each package registers its own subcommands
        groups.append((label, [name for name in sub.choices if name not in before]))
    d = sub.add_parser("demo", help="the main job: the whole asset graph through Dagster, on the bundled sample data")
    d.add_argument("--dagster-home", help="Dagster instance folder (default: $DAGSTER_HOME, else ./pipelines/dagster_home)")
    d.add_argument("--datasets", nargs="+", help="a subset of the catalog (default: every dataset)")
    d.add_argument("--force", action="store_true", help="rerun every step even if it is up to date")
    d.set_defaults(fn=_cmd_demo)
    groups.append(("main job", ["demo"]))
    p.description = overview(groups)
    return p


def overview(groups: list[tuple[str, list[str]]]) -> str:
    """The top-level help's list of every subcommand by package, built from what was registered (never stale)."""
    width = max(len(label) for label, _ in groups)
    lines = ["MedLVR: corpus building, latent-reasoning training and evaluation for medical VQA.", "",
             "Commands by package (`medlvr COMMAND --help` for a command's options):"]
    lines += [f"  {label:<{width}}  {' | '.join(names)}" for label, names in groups if names]
    return "\n".join(lines)


# Errors about the user's input whose message already says what is wrong where (a config key, a catalog or
# knowledge-graph entry, a benchmark file and record, a damaged checkpoint, a missing file): printed as ONE line,
# exit 2, no traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (CatalogError, ConfigError, BenchmarkError, CheckpointError, KGError, FileNotFoundError)


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown = unknown_command(parser, argv)
    if unknown:
        print(f"medlvr: error: {unknown}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        status = args.fn(args)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here, not at interpreter exit
        return status
    except USER_ERRORS as e:
        print(f"medlvr: error: {one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not stdout_is_broken():
            raise  # a socket or a child's pipe: a real error
        # `medlvr catalog --json | head`: the reader has what it wanted. Quiet, as Unix tools are, with the status
        # a shell shows for a process ended by SIGPIPE; stdout goes to /dev/null so the exit flush cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def unknown_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """One line with a did-you-mean for a mistyped subcommand (argparse's own message lists every choice)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    [commands] = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if word is None or word in commands or argv.index(word) != 0:  # options before it: argparse says what is wrong
        return None
    return f"unknown command {word!r}{did_you_mean(word, commands)}; see `medlvr --help`"


def stdout_is_broken() -> bool:
    """stdout is a pipe whose reader has closed it (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError):  # stdout closed or replaced by something without a descriptor
        return True


if __name__ == "__main__":
    sys.exit(main())
