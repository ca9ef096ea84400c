"""Sample shards and a tiny-model config for tests, the demo and benchmarks (offline, a few seconds)."""

from __future__ import annotations

from pathlib import Path

from medlvr.training.sft.config import SFTConfig, load_sft_config

SAMPLE_DATASETS = ("busi", "vindr_cxr", "refuge")
REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "sft_tiny.yaml"


def build_sample_corpus(out: str | Path, datasets=SAMPLE_DATASETS) -> Path:
    """`medlvr build-corpus` on the bundled sample data of a few datasets; returns the corpus folder."""
    from medlvr.corpus.build import BuildConfig, build_corpus
    from medlvr.corpus.sample_data import write_samples

    out = Path(out)
    if not (out / "corpus" / "shards").is_dir():
        write_samples(out / "data", list(datasets))
        build_corpus(out / "data", out / "corpus", BuildConfig(), list(datasets), progress=False, log=lambda *_: None)
    return out / "corpus"


def tiny_config(corpus: str | Path, out_dir: str | Path, *overrides: str) -> SFTConfig:
    """configs/sft_tiny.yaml with the corpus, output folder and overrides; no progress bar / TensorBoard."""
    return load_sft_config(TINY_CONFIG, [f"data.corpus={corpus}", f"run.out_dir={out_dir}", "run.progress=false",
                                     "run.tensorboard=false", *overrides])
