"""`medlvr` subcommands of the training package (registered by the root parser, `medlvr.pipelines.cli`).

    medlvr train-sft --config FILE [--set key=value ...]     Stage 1, ROI-SFT (training.sft.recipe)
    medlvr train-vlpo --config FILE [--set sec.key=value ...] Stage 2, VLPO / GRPO (training.vlpo.trainer)

Multi-GPU / multi-node runs use a launcher on the recipe module instead (every rank runs it):
    deepspeed [--hostfile H] --module medlvr.training.sft.recipe --config FILE
    torchrun --nproc_per_node G -m medlvr.training.sft.recipe --config FILE
Importing this module is cheap (no torch): the recipe is imported when the command runs.
"""

from __future__ import annotations

from medlvr.corpus.config import add_config_arguments


def _cmd_train_sft(args) -> int:
    from medlvr.training.sft.recipe import run_from_args  # torch only when the command runs

    return run_from_args(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("train-sft", help="Stage 1: ROI-supervised fine-tuning on corpus shards")
    add_config_arguments(p, "configs/sft_tiny.yaml, configs/sft_qwen25vl_7b.yaml", "engine.lr=1e-5")
    p.set_defaults(fn=_cmd_train_sft)
    register_vlpo(subparsers)


def _cmd_train_vlpo(args) -> int:
    from medlvr.training.vlpo.trainer import run_cli  # torch only when the command runs

    return run_cli(args)


def register_vlpo(subparsers) -> None:
    p = subparsers.add_parser("train-vlpo", help="Stage 2: VLPO / GRPO variants on OmniMedVQA (docs/method.md §4-5)")
    add_config_arguments(p, "configs/vlpo_tiny.yaml, configs/vlpo_qwen25vl_7b.yaml", "algo.variant=grpo")
    p.set_defaults(fn=_cmd_train_vlpo)
