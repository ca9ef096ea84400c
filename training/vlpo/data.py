"""Prompts for VLPO: multiple-choice `Sample`s from a registered sample source -> left-padded processor batches.

* `load_samples(cfg.data, work_dir)`: the training prompts from the source `data.source` names (`sample_sources()`):
  every registered benchmark (`medlvr.corpus.evalsets.registry`; OmniMedVQA in the paper) through its loader,
  "synthetic" (`synthetic_samples`), "synthetic_grounding" (the mechanism task's own prompts), or any source
  registered with `@register_sample_source(name)`.
* `prompt_text(sample, instruction)`: question, one option per line (`A. text`), the instruction.
* `PromptBatch`: processor output for B prompts plus per-prompt options and gold letters.
* `PromptSampler`: deterministic epoch-wise shuffling; `state_dict()` / `load_state_dict()` for exact resume.

`synthetic_samples` writes a small learnable multiple-choice set (each question template has a fixed correct
letter, options in a fixed order, tiny random images): the tiny-model RL test and the demo use it.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medlvr.corpus.evalsets.base import Sample, file_uri, open_image
from medlvr.corpus.evalsets.registry import all_benchmarks
from medlvr.corpus.evalsets.synthetic_grounding import load_grounding_task
from medlvr.training.vlpo.algos import register_into
from medlvr.corpus.prompts import MC_INSTRUCTION, mc_prompt_text

DEFAULT_INSTRUCTION = MC_INSTRUCTION  # the evaluation's direct multiple-choice instruction too

# (question, options in order, gold letter): the answer depends on the question only
SYNTHETIC_TEMPLATES = [
    ("Which organ is abnormal?", ("liver", "kidney", "spleen", "lung"), "A"),
    ("Is there a pleural effusion?", ("yes", "no"), "B"),
    ("What is the most likely diagnosis?", ("mass", "infarct", "hemorrhage", "normal"), "C"),
]


def prompt_text(sample: Sample, instruction: str = DEFAULT_INSTRUCTION) -> str:
    return mc_prompt_text(sample.question, sample.options, instruction)


def synthetic_samples(n: int, image_dir: str | Path, seed: int = 0, size: int = 56,
                      templates: Sequence[int] | None = None) -> list[Sample]:
    """n multiple-choice Samples cycling through SYNTHETIC_TEMPLATES (or the `templates` subset), each with its
    own random PNG."""
    pool = [SYNTHETIC_TEMPLATES[t] for t in templates] if templates else SYNTHETIC_TEMPLATES
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q, opts, gold = pool[i % len(pool)]
        path = image_dir / f"syn_{seed}_{i:04d}.png"
        pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        if not path.is_file():  # every rank writes the set: a temporary name + rename, so no rank reads a half PNG
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            Image.fromarray(pixels).save(tmp, format="PNG")
            os.replace(tmp, path)
        out.append(Sample(benchmark="synthetic_mc", sample_id=f"syn-{seed}-{i}", question=q, kind="mc",
                          answer=gold, options=tuple(zip("ABCD", opts)), images=(file_uri(path),),
                          tags={"modality": "synthetic", "split": "train"}))
    return out


SampleSource = Callable[..., list[Sample]]  # source(data_cfg: DataConfig, work_dir: Path) -> Samples
SAMPLE_SOURCES: dict[str, SampleSource] = {}


def register_sample_source(name: str):
    """Decorator: register `fn(data_cfg, work_dir) -> list[Sample]` as the VLPO sample source `name`."""
    return register_into(SAMPLE_SOURCES, "sample source", name)


@register_sample_source("synthetic")
def _synthetic_source(data_cfg, work_dir: Path) -> list[Sample]:
    return synthetic_samples(data_cfg.synthetic_size, Path(work_dir) / "synthetic_images", seed=data_cfg.split_seed,
                             templates=data_cfg.synthetic_templates)


@register_sample_source("synthetic_grounding")
def _grounding_source(data_cfg, work_dir: Path) -> list[Sample]:
    if data_cfg.root is None:
        raise ValueError("data.root (the directory write_grounding_task wrote) is required for "
                         "data.source=synthetic_grounding")
    return load_grounding_task(data_cfg.root, data_cfg.split, data_cfg.limit)


def benchmark_source(name: str) -> SampleSource:
    """A registered benchmark as a sample source: its loader on `data.root`, given the `data` settings its
    signature accepts (split, seed <- split_seed, test_fraction, splits_dir, modalities, limit)."""
    loader = all_benchmarks()[name].loader

    def source(data_cfg, work_dir: Path) -> list[Sample]:
        if data_cfg.root is None:
            raise ValueError(f"data.root (the {name} directory) is required for data.source={name}")
        settings = {"split": data_cfg.split, "seed": data_cfg.split_seed, "test_fraction": data_cfg.test_fraction,
                    "splits_dir": data_cfg.splits_dir, "limit": data_cfg.limit,
                    "modalities": list(data_cfg.modalities) if data_cfg.modalities else None}
        accepted = inspect.signature(loader).parameters
        return list(loader(data_cfg.root, **{k: v for k, v in settings.items() if k in accepted}))

    return source


def sample_sources() -> dict[str, SampleSource]:
    """Every source `data.source` may name: the registered ones and every registered benchmark."""
    benches = {name: benchmark_source(name) for name in all_benchmarks() if name not in SAMPLE_SOURCES}
    return {**SAMPLE_SOURCES, **benches}


def load_samples(data_cfg, work_dir: str | Path) -> list[Sample]:
    """The training prompts of a run: multiple-choice samples of the source `data.source` names."""
    sources = sample_sources()
    if data_cfg.source not in sources:
        raise ValueError(f"data.source {data_cfg.source!r} is not a registered sample source ({sorted(sources)})")
    samples = sources[data_cfg.source](data_cfg, Path(work_dir))
    if not samples:
        raise ValueError(f"no {data_cfg.source} samples for split {data_cfg.split!r} under {data_cfg.root}")
    not_mc = sorted({s.kind for s in samples} - {"mc"})
    if not_mc:
        raise ValueError(f"data.source={data_cfg.source}: VLPO's rewards score option letters, but the samples "
                         f"include kinds {not_mc} (only multiple choice trains)")
    return samples


@dataclass
class PromptBatch:
    inputs: dict  # processor output: input_ids (B, L), attention_mask, mm_token_type_ids, pixel_values, image_grid_thw
    options: list[tuple[tuple[str, str], ...]]  # per prompt
    gold: list[str]  # per prompt, option letter
    sample_ids: list[str]


def build_prompt_batch(processor, samples: Sequence[Sample], instruction: str = DEFAULT_INSTRUCTION,
                       image_loader: Callable[[str], Image.Image] = open_image) -> PromptBatch:
    """Chat-templated prompts (image first, then the text), left-padded, one batch."""
    texts, images = [], []
    for s in samples:
        content = [{"type": "image"} for _ in s.images] + [{"type": "text", "text": prompt_text(s, instruction)}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                   add_generation_prompt=True))
        images.extend(image_loader(u) for u in s.images)
    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    return PromptBatch(inputs=dict(inputs), options=[s.options for s in samples], gold=[s.answer for s in samples],
                       sample_ids=[s.sample_id for s in samples])


class PromptSampler:
    """Yields batches of sample indices: each epoch a permutation drawn from `Random(seed + epoch)`."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if n < 1:
            raise ValueError("no samples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0

    def _perm(self) -> list[int]:
        p = list(range(self.n))
        random.Random(self.seed + self.epoch).shuffle(p)
        return p

    def next_indices(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            perm = self._perm()
            take = perm[self.pos: self.pos + self.batch_size - len(out)]
            out += take
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for {state['n']} samples, this run has {self.n}")
        self.epoch, self.pos, self.seed = state["epoch"], state["pos"], state["seed"]
