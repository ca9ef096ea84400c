"""OmniMedVQA (open-access part) loader, registered as "omnimedvqa" (docs/benchmarks.md §1.1).

Layout read (the unpacked HF `OmniMedVQA.zip`):

    <root>/QA_information/Open-access/<source>.json   list of dicts: dataset, question_id, question_type,
                                                       question, gt_answer (option TEXT), image_path,
                                                       option_A..option_D (C/D optional), modality_type
                                                       (one record uses `modality`: normalised here)
    <root>/Images/<source>/...                         image_path is relative to <root>

Split: `split="train" | "test" | "all"`. Without split files, an 80/20 split is drawn reproducibly PER MODALITY:
records of a modality are ordered by their stable `sample_id` and shuffled with `random.Random(f"{seed}:{modality}")`;
the first `round(test_fraction * n)` are test. With `splits_dir` (Med-R1's `Splits/modality`, holding
`{train,test}/<modality>_{train,test}.json` of {"image", "problem", "solution"} records; the short-named copies
from `src/eval_vqa/prompts/modality` work too) the files define the split and the items: options are parsed from
the inlined `Q A)opt, B)opt` form, the modality comes from the file name, the source from the image path, and the
question type is looked up in the open-access JSON when present (else "unknown").

Samples: kind "mc", answer = option letter, tags {modality (short name), modality_raw, question_type, source,
split}. sample_id = `omni-` + sha1(image path + question)[:16] (stable across runs and split choices).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from PIL import Image
import numpy as np

from medlvr.corpus.evalsets.base import BenchmarkError, Sample, file_in_root, file_uri, read_json_list, require_dir
from medlvr.corpus.evalsets.registry import register_benchmark

NAME = "omnimedvqa"
LETTERS = "ABCDEF"
# raw modality_type strings (spelled as in the data, typos included) and Med-R1 short file names -> short name
MODALITY_NAMES = {
    "CT(Computed Tomography)": "CT",
    "MR (Mag-netic Resonance Imaging)": "MRI",
    "X-Ray": "X-Ray",
    "ultrasound": "Ultrasound",
    "Dermoscopy": "Dermoscopy",
    "Fundus Photography": "Fundus",
    "OCT (Optical Coherence Tomography": "OCT",
    "Microscopy Images": "Microscopy",
    "CT": "CT", "MRI": "MRI", "Ultrasound": "Ultrasound", "Fundus": "Fundus", "OCT": "OCT",
    "Microscopy": "Microscopy", "unknown": "unknown",
}
SPLITS = ("train", "test", "all")
_OPT_SPLIT = re.compile(r"(?:^|,\s|\s)([A-F])\)")
_SOLUTION = re.compile(r"<answer>\s*([A-F])\s*</answer>", re.I)


def modality_short(raw: str) -> str:
    return MODALITY_NAMES.get(raw.strip(), MODALITY_NAMES.get(raw, raw.strip()))


def stable_id(image: str, question: str) -> str:
    return "omni-" + hashlib.sha1(f"{image}\n{question.strip()}".encode()).hexdigest()[:16]


def _read_json_list(path: Path) -> list[dict]:
    data = read_json_list(path, "OmniMedVQA")
    if not all(isinstance(r, dict) for r in data):
        raise BenchmarkError(f"OmniMedVQA: {path} must hold a JSON list of objects")
    return data


def _open_access_records(root: Path) -> list[dict]:
    qa_dir = root / "QA_information" / "Open-access"
    files = sorted(qa_dir.glob("*.json")) if qa_dir.is_dir() else []
    if not files:
        raise BenchmarkError(f"OmniMedVQA: no QA_information/Open-access/*.json under {root}")
    out = []
    for f in files:
        for i, r in enumerate(_read_json_list(f)):
            if "modality_type" not in r and "modality" in r:  # one record in `Chest CT Scan.json`
                r = {**r, "modality_type": r["modality"]}
            missing = [k for k in ("question", "gt_answer", "image_path", "option_A", "option_B", "modality_type")
                       if k not in r]
            if missing:
                raise BenchmarkError(f"OmniMedVQA: {f.name}[{i}] lacks {missing}")
            options = tuple((l, str(r[f"option_{l}"]).strip()) for l in LETTERS if r.get(f"option_{l}") is not None)
            gt = str(r["gt_answer"]).strip()
            letters = [l for l, t in options if t == gt] or [l for l, t in options if t.casefold() == gt.casefold()]
            if not letters:
                raise BenchmarkError(f"OmniMedVQA: {f.name}[{i}] gt_answer {gt!r} matches no option {options}")
            out.append(dict(
                image=str(r["image_path"]), question=str(r["question"]).strip(), options=options,
                answer=letters[0], modality_raw=str(r["modality_type"]), question_type=str(r.get("question_type",
                "unknown")), source=str(r.get("dataset") or Path(r["image_path"]).parts[1]),
                question_id=str(r.get("question_id", "")),
            ))
    return out


def split_records(records: list[dict], seed: int = 0, test_fraction: float = 0.2) -> dict[str, str]:
    """sample_id -> "train" | "test": per modality, ids sorted, shuffled by `Random(f"{seed}:{modality}")`."""
    by_mod: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_mod[modality_short(r["modality_raw"])].append(r["sample_id"])
    out = {}
    for mod in sorted(by_mod):
        ids = sorted(set(by_mod[mod]))
        random.Random(f"{seed}:{mod}").shuffle(ids)
        n_test = round(test_fraction * len(ids))
        out.update({i: ("test" if k < n_test else "train") for k, i in enumerate(ids)})
    return out


def parse_medr1_problem(problem: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """'Q? A)x, B)y' -> ('Q?', (('A', 'x'), ('B', 'y')))."""
    marks = list(_OPT_SPLIT.finditer(problem))
    if not marks:
        raise ValueError(f"no inlined options in {problem!r}")
    question = problem[: marks[0].start()].strip()
    opts = []
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(problem)
        opts.append((m.group(1), problem[m.end():end].strip().rstrip(",").strip()))
    return question, tuple(opts)


def _medr1_records(splits_dir: Path, split: str, qtype_lookup: dict[tuple[str, str], str]) -> list[dict]:
    parts = ("train", "test") if split == "all" else (split,)
    out = []
    for part in parts:
        d = splits_dir / part
        files = sorted(d.glob(f"*_{part}.json")) if d.is_dir() else []
        if not files:
            raise BenchmarkError(f"OmniMedVQA: no {part}/*_{part}.json split files under {splits_dir}")
        for f in files:
            raw_mod = f.name[: -len(f"_{part}.json")]
            for i, r in enumerate(_read_json_list(f)):
                try:
                    question, options = parse_medr1_problem(str(r["problem"]))
                    gold = _SOLUTION.search(str(r["solution"]))
                    if gold is None:
                        raise ValueError(f"solution {r['solution']!r} has no <answer> letter")
                    image = str(r["image"])
                except (KeyError, ValueError) as e:
                    raise BenchmarkError(f"OmniMedVQA split file {f}[{i}]: {e}") from e
                src = Path(image).parts[1] if len(Path(image).parts) > 1 else "unknown"
                out.append(dict(image=image, question=question, options=options, answer=gold.group(1).upper(),
                                modality_raw=raw_mod, question_type=qtype_lookup.get((image, question), "unknown"),
                                source=src, question_id="", split=part))
    return out


def load_omnimedvqa(
    root: str | Path,
    split: str = "test",
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    splits_dir: str | Path | None = None,
    modalities: list[str] | None = None,
    limit: int | None = None,
    check_images: bool = True,
) -> Iterator[Sample]:
    """Yield OmniMedVQA Samples of `split` from a local root (see module docstring)."""
    if split not in SPLITS:
        raise BenchmarkError(f"OmniMedVQA: split must be one of {SPLITS}, got {split!r}")
    if not 0 < test_fraction < 1:
        raise BenchmarkError(f"OmniMedVQA: test_fraction must be in (0, 1), got {test_fraction}")
    root = require_dir(Path(root), "OmniMedVQA root")
    if splits_dir is not None:
        splits_dir = require_dir(Path(splits_dir), "OmniMedVQA Med-R1 splits")
        lookup = {}
        if (root / "QA_information" / "Open-access").is_dir():
            lookup = {(r["image"], r["question"]): r["question_type"] for r in _open_access_records(root)}
        records = _medr1_records(splits_dir, split, lookup)
        for r in records:
            r["sample_id"] = stable_id(r["image"], r["question"])
    else:
        records = _open_access_records(root)
        for r in records:
            r["sample_id"] = stable_id(r["image"], r["question"])
        assign = split_records(records, seed, test_fraction)
        for r in records:
            r["split"] = assign[r["sample_id"]]
        if split != "all":
            records = [r for r in records if r["split"] == split]
    wanted = None if modalities is None else {modality_short(m) for m in modalities}
    seen: set[str] = set()
    n = 0
    for r in records:
        mod = modality_short(r["modality_raw"])
        if (wanted is not None and mod not in wanted) or r["sample_id"] in seen:
            continue
        seen.add(r["sample_id"])
        path = file_in_root(root, r["image"], f"OmniMedVQA: image_path {r['image']!r}")
        if check_images and not path.is_file():
            raise BenchmarkError(f"OmniMedVQA: image {r['image']} not found under {root}")
        yield Sample(
            benchmark=NAME, sample_id=r["sample_id"], question=r["question"], kind="mc", answer=r["answer"],
            options=r["options"], images=(file_uri(path),),
            tags={"modality": mod, "modality_raw": r["modality_raw"], "question_type": r["question_type"],
                  "source": r["source"], "split": r["split"], "question_id": r["question_id"]},
        )
        n += 1
        if limit is not None and n >= limit:
            return


# ---- sample writer ------------------------------------------------------------------------------------------------
# Write a miniature OmniMedVQA open-access tree (docs/benchmarks.md §1.1), and optionally Med-R1-style split files.
#
#     write_omnimedvqa(out_dir, seed=0, per_modality=5, medr1_splits=True) -> out_dir
#
# Produces `QA_information/Open-access/<source>.json` (one file per fake source dataset, records with the real
# keys; `gt_answer` is the option TEXT; 2-, 3- and 4-option questions; one record spelled with `modality` instead of
# `modality_type`, as in the real `Chest CT Scan.json`), small PNGs under `Images/<source>/`, and with
# `medr1_splits` a `Splits/modality/{train,test}/<modality>_{train,test}.json` set ({"image", "problem",
# "solution"} records, options inlined as `Q A)x, B)y`). Deterministic for a seed; no network.


# (raw modality_type as spelled in the data, source dataset, question templates with (options, answer index))
_SOURCES = [
    ("CT(Computed Tomography)", "Chest CT Scan"),
    ("MR (Mag-netic Resonance Imaging)", "RadImageNet"),
    ("X-Ray", "MIAS"),
    ("ultrasound", "BUSI"),
    ("Dermoscopy", "HAM10000"),
    ("Fundus Photography", "ACRIMA"),
    ("OCT (Optical Coherence Tomography", "OCTID"),
    ("Microscopy Images", "MHSMA"),
]
_QUESTIONS = [
    ("Modality Recognition", "What imaging technique is utilized to capture this picture?",
     ["{mod}", "Echocardiogram", "Mammography", "Nuclear medicine"]),
    ("Anatomy Identification", "Which organ is shown in this image?", ["liver", "kidney", "spleen", "lung"]),
    ("Disease Diagnosis", "Is there evidence of disease in this image?", ["yes", "no"]),
    ("Lesion Grading", "What is the grade of the lesion?", ["mild", "moderate", "severe"]),
]


def _image(path: Path, rng: np.random.Generator, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(path)


def write_omnimedvqa(out_dir: str | Path, seed: int = 0, per_modality: int = 5, medr1_splits: bool = True) -> Path:
    out = Path(out_dir)
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    qa_dir = out / "QA_information" / "Open-access"
    qa_dir.mkdir(parents=True, exist_ok=True)
    medr1: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    qid = 0
    for raw_mod, source in _SOURCES:
        records = []
        for i in range(per_modality):
            qtype, question, options = _QUESTIONS[i % len(_QUESTIONS)]
            options = [o.format(mod=raw_mod.split("(")[0].strip() or raw_mod) for o in options]
            prng.shuffle(options)
            answer = options[prng.randrange(len(options))]
            image_rel = f"Images/{source}/{source.replace(' ', '_')}_{i:03d}.png"
            _image(out / image_rel, rng)
            rec = {"dataset": source, "question_id": f"{source}_{qid}", "question_type": qtype,
                   "question": question, "gt_answer": answer, "image_path": image_rel,
                   **{f"option_{'ABCD'[k]}": o for k, o in enumerate(options)}, "modality_type": raw_mod}
            if source == "Chest CT Scan" and i == 0:  # the real data has one record keyed `modality`
                rec["modality"] = rec.pop("modality_type")
            records.append(rec)
            qid += 1
            part = "test" if i % 5 == 0 else "train"
            problem = question + " " + ", ".join(f"{'ABCD'[k]}){o}" for k, o in enumerate(options))
            letter = "ABCD"[options.index(answer)]
            medr1[part].setdefault(raw_mod, []).append(
                {"image": image_rel, "problem": problem, "solution": f"<answer> {letter} </answer>"})
        (qa_dir / f"{source}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    if medr1_splits:
        for part, by_mod in medr1.items():
            d = out / "Splits" / "modality" / part
            d.mkdir(parents=True, exist_ok=True)
            for raw_mod, recs in by_mod.items():
                (d / f"{raw_mod}_{part}.json").write_text(json.dumps(recs, indent=1), encoding="utf-8")
    return out


def _writer(root: Path) -> int:
    """Sample-writer contract (registry.write_benchmark_samples): returns the number of test samples the
    loader yields with its defaults (seeded 80/20 split: round(0.2 * 5) = 1 per modality)."""
    write_omnimedvqa(root, seed=0, per_modality=5)
    return 8


register_benchmark(NAME, load_omnimedvqa, sample_writers={"omnimedvqa": _writer},
                   external=False, rank=0)
