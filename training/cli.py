"""`medlvr` subcommands of the training package (registered by `corpus.cli` when this module exists).

    medlvr train-sft --config FILE [--set key=value ...]     Stage 1, ROI-SFT (training.sft.recipe)
    medlvr train-vlpo --config FILE [--set sec.key=value ...] Stage 2, VLPO / GRPO (training.vlpo.trainer)
    medlvr experiment mechanism --config FILE [--quick]       Table 4 in miniature (training.experiments.mechanism)

Multi-GPU / multi-node runs use a launcher on the recipe module instead (every rank runs it):
    deepspeed [--hostfile H] --module training.sft.recipe --config FILE
    torchrun --nproc_per_node G -m training.sft.recipe --config FILE
Importing this module is cheap (no torch): the recipe is imported when the command runs.
"""

from __future__ import annotations

import argparse


def add_sft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (configs/sft_tiny.yaml, configs/sft_qwen25vl_7b.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set engine.lr=1e-5 (repeatable; values parsed as YAML)")


def _cmd_train_sft(args) -> int:
    from training.sft.recipe import run_from_args

    return run_from_args(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("train-sft", help="Stage 1: ROI-supervised fine-tuning on corpus shards")
    add_sft_arguments(p)
    p.set_defaults(fn=_cmd_train_sft)
    register_vlpo(subparsers)
    register_experiment(subparsers)


def _cmd_train_vlpo(args) -> int:
    from training.vlpo.trainer import run_cli

    return run_cli(args)


def register_vlpo(subparsers) -> None:
    p = subparsers.add_parser("train-vlpo", help="Stage 2: VLPO / GRPO variants on OmniMedVQA (method.md §4-5)")
    p.add_argument("--config", required=True, help="YAML config (configs/vlpo_tiny.yaml, configs/vlpo_qwen25vl_7b.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set algo.variant=grpo (repeatable; values parsed as YAML)")
    p.set_defaults(fn=_cmd_train_vlpo)


def _cmd_experiment(args) -> int:
    from training.experiments.mechanism import main

    return main(args)


def register_experiment(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="experiments on the training stack (mechanism: docs/mechanism.md)")
    p.add_argument("name", choices=["mechanism"], help="mechanism: the four Table-4 variants on a synthetic grounding task")
    p.add_argument("--config", default=None, help="YAML (configs/mechanism.yaml); defaults when omitted")
    p.add_argument("--quick", action="store_true", help="the config's reduced `quick:` settings (CI, a few minutes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sft.steps=100 (repeatable; values parsed as YAML)")
    p.set_defaults(fn=_cmd_experiment)
