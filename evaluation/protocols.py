"""Scoring protocols: which samples count, how they are asked, and when an answer is right (docs/benchmarks.md §3.8).
The same model scores points apart under different kits' rules, so every report names its
protocol (`protocol:` in the evaluation config; in every table caption and in results.json).

* `medlvr` (default): MedLVR's prompts (the model's `prompt_style`) and parser (`medlvr.corpus.evalsets.answers`:
  no random or similarity fallbacks, unparseable is wrong), every sample of the configured splits.
* `medevalkit`: MedEvalKit's English prompts and rule-based judges (`medlvr.evaluation.medevalkit_rules`: yes/no
  by substring, short answers by exact match, multiple choice with its similarity fallback) and its splits:
  OmniMedVQA's whole open-access set, SLAKE's test file in both languages.
* `paper`: the seed paper's: MedLVR's prompts and parser; SLAKE and VQA-RAD scored on their yes/no questions only;
  OmniMedVQA on Med-R1's 80/20 test split (its split files: `benchmarks.omnimedvqa.splits_dir`, required).

A protocol is a registered row (`register_protocol`); a new one is one call here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medlvr.corpus.evalsets.answers import is_correct, parse_answer
from medlvr.corpus.evalsets.base import Sample
from medlvr.evaluation import medevalkit_rules

# (benchmark, output, kind, answer, options, tags) -> (parsed answer or None, correct)
Judge = Callable[[str, str, str, str, tuple, dict], tuple[Any, bool]]


def medlvr_judge(benchmark: str, output: str, kind: str, answer: str, options, tags) -> tuple[Any, bool]:
    parsed = parse_answer(output, kind, options)
    return parsed, is_correct(parsed, kind, answer)


def medevalkit_judge(benchmark: str, output: str, kind: str, answer: str, options, tags) -> tuple[Any, bool]:
    from medlvr.corpus.evalsets.answers import clean_latent

    return medevalkit_rules.verdict(benchmark, clean_latent(output), kind, answer, options, tags)


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str  # one line, in the report's setup and results.json
    judge: Judge
    prompt_style: str | None = None  # fixed prompts (every model asked the same way); None: the model's own
    loader_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # benchmark -> fixed split args
    required: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # benchmark -> args the config must give
    keep: Callable[[Sample], bool] | None = None  # which samples count (None: all)


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    if protocol.name in PROTOCOLS:
        raise ValueError(f"protocol {protocol.name!r} is registered twice")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


def _paper_keep(sample: Sample) -> bool:
    return sample.benchmark not in ("slake", "vqa_rad") or sample.kind == "yesno"


register_protocol(Protocol(
    "medlvr", "MedLVR's prompts and parser (no similarity fallback, unparseable is wrong), all configured samples",
    medlvr_judge))
register_protocol(Protocol(
    "medevalkit", "MedEvalKit's prompts, rule judges (yes/no substring, exact match, multiple choice with its "
                  "similarity fallback) and splits (OmniMedVQA open-access whole, SLAKE test en + zh)",
    medevalkit_judge, prompt_style="medevalkit",
    loader_kwargs={"omnimedvqa": {"split": "all"}, "slake": {"split": "test", "lang": "all"}}))
register_protocol(Protocol(
    "paper", "the seed paper's: MedLVR's parser; SLAKE and VQA-RAD on their yes/no questions; OmniMedVQA on "
             "Med-R1's 80/20 test split",
    medlvr_judge, required={"omnimedvqa": ("splits_dir",)}, keep=_paper_keep))
