"""Batched, greedy latent inference over benchmark Samples, written as resumable prediction JSONL.

* Prompts: one template per answer kind and prompt style (docs/benchmarks.md §3.2). Multiple-choice options are
  appended as "A. text" lines unless the question already embeds them (`options_embedded`).
* Decoding: `medlvr.training.latent_decode.latent_generate`, temperature 0, K latent steps (K = 0: plain decoding),
  fixed pixel budget (`min_pixels` / `max_pixels` on the image processor).
* Records: one JSON line per sample, appended and flushed as each batch finishes:
  {"benchmark", "sample_id", "output", "n_tokens", "latency_s", "model", "k_latent", "variant", "rank",
   "world_size", "n_text_tokens", "n_latent", "finish_reason", "batch_size", "batch_latency_s", "prompt_hash",
   "ablation" (None, or zero / shuffle / noise), "closed" (decoded under the visual bottleneck)}
  `n_tokens` counts every generated position (text, control tokens, latent slots, the EOS token);
  `latency_s` is the sample's share of its batch's wall time (batch time / rows), so sums give total time.
* Resume: ids already in the output file (or in the merged file of a sharded run) are skipped.
* Data parallel: rank r of W takes `ids[r::W]` of the sorted ids and writes `<stem>.rank{r}-of-{W}.jsonl`;
  `merge_predictions` joins the rank files by sample id (`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import torch
from PIL import UnidentifiedImageError

from medlvr.corpus.evalsets.base import BenchmarkError, Sample, open_image
from medlvr.corpus.prompts import MC_INSTRUCTION, OPEN_INSTRUCTION, YESNO_INSTRUCTION, option_lines
from medlvr.evaluation import medevalkit_rules
from medlvr.evaluation.config import DecodeSettings, ModelSpec
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.loading import load_model_or_tiny
from medlvr.training.model import LatentTokenIds, eos_token_ids, set_pixel_budget

# the direct-answer instructions are the ones VLPO trains with (medlvr.corpus.prompts): one source, no drift
DIRECT_MC, DIRECT_YESNO, DIRECT_OPEN = MC_INSTRUCTION, YESNO_INSTRUCTION, OPEN_INSTRUCTION
TAGS_SUFFIX = "First reason about the image, then put the final answer inside <answer></answer> tags."
TAGS_WHAT = {"mc": "the option's letter", "yesno": "yes or no", "open": "a single word or phrase"}


# ---------------------------------------------------------------------------------------------------- prompts


def options_embedded(sample: Sample) -> bool:
    """True when the question text already lists every option letter ("A.", "(B)", "C:" ...)."""
    if "options_in_question" in sample.tags:
        return bool(sample.tags["options_in_question"])
    if not sample.options:
        return True
    return all(re.search(rf"(?:^|[\s(\[]){re.escape(letter)}\s*[.):\]]", sample.question)
               for letter, _ in sample.options)


def prompt_text(sample: Sample, style: str = "tags") -> str:
    """The user text of the prompt (images go before it in the chat message)."""
    if style == "medevalkit":  # the medevalkit protocol's prompts (medlvr.evaluation.medevalkit_rules)
        return medevalkit_rules.prompt(sample.benchmark, sample.question.strip(), sample.kind, sample.options,
                                       dict(sample.tags))
    parts = [sample.question.strip()]
    if sample.kind == "mc" and not options_embedded(sample):
        parts.append(option_lines(sample.options))
    if style == "direct":
        parts.append({"mc": DIRECT_MC, "yesno": DIRECT_YESNO}.get(sample.kind, DIRECT_OPEN))
    elif style == "tags":
        parts.append(f"{TAGS_SUFFIX} The answer is {TAGS_WHAT.get(sample.kind, TAGS_WHAT['open'])}.")
    else:
        raise ValueError(f"unknown prompt style {style!r}")
    return "\n".join(parts)


def chat_text(processor, sample: Sample, style: str) -> str:
    content = [{"type": "image"} for _ in sample.images] + [{"type": "text", "text": prompt_text(sample, style)}]
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def image_location(uri: str, root: Path | None = None) -> str:
    """Where an image URI points, for an error line: the file relative to the benchmark root (when under it), plus
    the zip member or the Parquet cell."""
    u = urlparse(uri)
    path = Path(unquote(u.path))
    if root is not None and path.is_relative_to(Path(root).resolve()):
        path = path.relative_to(Path(root).resolve())
    if u.scheme == "zip":
        return f"{path.as_posix()} member {unquote(u.fragment)}"
    if u.scheme == "parquet":
        q = parse_qs(u.fragment)
        return f"{path.as_posix()} row {q.get('row', ['?'])[0]} column {q.get('col', ['?'])[0]}"
    return path.as_posix()


def open_sample_image(sample: Sample, uri: str, root: Path | None = None):
    """The PIL RGB image of a sample (through `open_image`, the one reader of benchmark images), or ONE
    BenchmarkError line naming the benchmark, the file (relative to `root`, the benchmark root) and the record. A
    broken image stops the run rather than being skipped: a skipped sample would silently change the denominator
    of every score of that benchmark."""
    where = f"benchmark {sample.benchmark}: record {sample.sample_id}: image {image_location(uri, root)}"
    try:
        return open_image(uri)
    except FileNotFoundError:
        raise BenchmarkError(f"{where} is missing") from None
    except KeyError:  # zipfile: no such member
        raise BenchmarkError(f"{where} is not in the archive") from None
    except UnidentifiedImageError:  # PIL names only <_io.BytesIO object>: say what it means
        raise BenchmarkError(f"{where} is not an image") from None
    except Exception as e:  # noqa: BLE001 - a damaged file makes PIL raise OSError, SyntaxError, struct.error, ...
        raise BenchmarkError(f"{where} is truncated, damaged or unreadable ({type(e).__name__}: "
                             f"{_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no detail"


def encode_batch(processor, samples: Sequence[Sample], style: str, root: Path | None = None):
    """Left-padded processor batch for `samples` (images opened lazily, one batch at a time); `root`: the
    benchmark root, to name a broken image's file relative to it."""
    texts = [chat_text(processor, s, style) for s in samples]
    images = [open_sample_image(s, u, root) for s in samples for u in s.images]
    kw = {"images": images} if images else {}
    return processor(text=texts, padding=True, return_tensors="pt", **kw), texts


# ------------------------------------------------------------------------------------------------ model loading


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: object
    processor: object
    ids: LatentTokenIds
    load_s: float = 0.0


def resolve_device(setting: str = "auto") -> torch.device:
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def load_for_eval(spec: ModelSpec, settings: DecodeSettings = DecodeSettings(),
                  attn_implementation: str | None = None) -> LoadedModel:
    """A checkpoint directory (ours or the base Qwen2.5-VL) or `tiny` (+ tiny_seed); eval mode, pixel budget set."""
    t0 = time.perf_counter()
    model, processor, ids = load_model_or_tiny(spec.path, spec.tiny_seed, settings.dtype,
                                               attn_implementation or settings.attn_implementation,
                                               resolve_device(settings.device))
    set_pixel_budget(processor, settings.min_pixels, settings.max_pixels)
    return LoadedModel(spec, model, processor, ids, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------- JSONL files


def read_records(path: Path) -> list[dict]:
    """All complete records of a prediction file; a torn last line (killed run) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a run killed mid-write) so that appended records start on a fresh line."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def finished_ids(paths: Iterable[Path]) -> set[str]:
    return {str(r["sample_id"]) for p in paths for r in read_records(p)}


def rank_path(path: Path, rank: int, world_size: int) -> Path:
    """`x/slake.jsonl` -> `x/slake.rank0-of-2.jsonl` (world_size 1: the path itself)."""
    path = Path(path)
    return path if world_size <= 1 else path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def shard(ids: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The ids rank `rank` evaluates: `sorted(ids)[rank::world_size]` (disjoint, covering, deterministic)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return sorted(ids)[rank::world_size]


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from the torchrun / accelerate environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def merge_predictions(path: Path, world_size: int, remove_parts: bool = False) -> list[dict]:
    """Join `path` (earlier merged records) and its rank files into `path`, one record per sample id, sorted."""
    path = Path(path)
    by_id: dict[str, dict] = {}
    parts = [rank_path(path, r, world_size) for r in range(world_size)] if world_size > 1 else []
    for p in [path, *parts]:
        for rec in read_records(p):
            by_id.setdefault(str(rec["sample_id"]), rec)
    recs = [by_id[k] for k in sorted(by_id)]
    if not recs and not path.exists():
        return recs
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tmp.replace(path)
    if remove_parts:
        for p in parts:
            p.unlink(missing_ok=True)
    return recs


# --------------------------------------------------------------------------------------------------- inference


def decode_text(tokenizer, seq: torch.Tensor, mask: torch.Tensor, drop: set[int]) -> str:
    """Generated ids -> text; control tokens kept (scoring strips the latent segment), EOS / pad dropped."""
    toks = [int(t) for t, m in zip(seq.tolist(), mask.tolist()) if m and int(t) not in drop]
    return tokenizer.decode(toks, skip_special_tokens=False)


def pending_samples(samples: Sequence[Sample], out_path: Path, rank: int = 0, world_size: int = 1,
                    advance: Callable[[int], None] | None = None,
                    prompt_hash: Callable[[Sample], str] | None = None) -> tuple[Path, list[Sample], int]:
    """(this rank's file, its samples not yet there or in the merged file, how many already are): the resume rule
    of every prediction writer (local models and endpoints). The file's torn last line, if any, is cut; samples
    already written count as finished at once for a progress bar (`advance(n)`)."""
    out_path = Path(out_path)
    my_path = rank_path(out_path, rank, world_size)
    my_path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(my_path)
    done = finished_ids({out_path, my_path})
    by_id = {s.sample_id: s for s in samples}
    if prompt_hash is not None:  # a finished record counts only if this run would ask the same prompt
        for path in (out_path, my_path):
            for rec in read_records(path):
                s = by_id.get(str(rec["sample_id"]))
                if s is not None and rec.get("prompt_hash") and rec["prompt_hash"] != prompt_hash(s):
                    raise BenchmarkError(
                        f"{path.name}: sample {s.sample_id} was answered with another prompt (another protocol or "
                        f"prompt_style); give this run its own out_dir, or delete {path}")
    mine = shard(list(by_id), rank, world_size)
    todo = [by_id[i] for i in mine if i not in done]
    if advance and len(mine) > len(todo):
        advance(len(mine) - len(todo))
    return my_path, todo, len(mine) - len(todo)


@dataclass
class RunStats:
    n_done: int = 0
    n_skipped: int = 0
    gen_s: float = 0.0  # wall time of the generate calls (model load excluded)
    n_tokens: int = 0


TransformFactory = Callable[[list[Sample]], Callable | None]


def run_predictions(
    lm: LoadedModel,
    samples: Sequence[Sample],
    out_path: Path,
    *,
    k_latent: int | None = None,
    variant: str = "main",
    settings: DecodeSettings = DecodeSettings(),
    rank: int = 0,
    world_size: int = 1,
    transform_factory: TransformFactory | None = None,
    ablation: str | None = None,
    progress: Callable[[str], None] | None = None,
    benchmark_root: Path | None = None,
    advance: Callable[[int], None] | None = None,
) -> RunStats:
    """Generate for this rank's shard of `samples` not yet in `out_path` (or its rank file); append records.

    A sample whose image cannot be read stops the run with one `BenchmarkError` line (`open_sample_image`); the
    records of the batches before it are kept, so the rerun after the fix resumes there.
    transform_factory(batch_samples) -> optional `latent_transform` for that batch (latent ablations).
    progress(message) after every batch (a log line); advance(n) with the samples just finished (a progress bar;
    samples already in the file count as finished at once).
    """
    k = lm.spec.k_latent if k_latent is None else k_latent
    style = lm.spec.prompt_style
    my_path, todo, n_skipped = pending_samples(
        samples, out_path, rank, world_size, advance,
        lambda s: hashlib.sha1(chat_text(lm.processor, s, style).encode()).hexdigest()[:12])
    stats = RunStats(n_skipped=n_skipped)
    if not todo:
        return stats
    tok = lm.processor.tokenizer
    eos = set(eos_token_ids(lm.model))
    drop = eos | {tok.pad_token_id}
    closed = settings.closed and k > 0
    cfg = DecodeConfig(k_latent=k, max_new_tokens=settings.max_new_tokens, force_start=k > 0, temperature=0.0,
                       closed=closed)
    gen = torch.Generator(device=lm.model.device).manual_seed(settings.seed)
    bs = max(1, settings.batch_size)
    with my_path.open("a") as f:
        for i in range(0, len(todo), bs):
            batch = todo[i:i + bs]
            enc, texts = encode_batch(lm.processor, batch, lm.spec.prompt_style, benchmark_root)
            transform = transform_factory(batch) if transform_factory else None
            t0 = time.perf_counter()
            out = latent_generate(lm.model, enc, lm.ids, cfg, generator=gen, latent_transform=transform)
            dt = time.perf_counter() - t0
            stats.gen_s += dt
            for r, s in enumerate(batch):
                n_tok = int(out.gen_mask[r].sum())
                last = int(out.sequences[r, n_tok - 1]) if n_tok else -1
                rec = {
                    "benchmark": s.benchmark, "sample_id": s.sample_id,
                    "output": decode_text(tok, out.sequences[r], out.gen_mask[r], drop),
                    "n_tokens": n_tok, "latency_s": dt / len(batch),
                    "model": lm.spec.name, "k_latent": k, "variant": variant,
                    "rank": rank, "world_size": world_size,
                    "n_text_tokens": int(out.sampled_mask[r].sum()), "n_latent": int(out.n_latent[r]),
                    "finish_reason": "stop" if last in eos else "length",
                    "batch_size": len(batch), "batch_latency_s": dt,
                    "prompt_hash": hashlib.sha1(texts[r].encode()).hexdigest()[:12],
                    "ablation": ablation, "closed": closed,
                }
                f.write(json.dumps(rec) + "\n")
                stats.n_tokens += n_tok
            f.flush()
            stats.n_done += len(batch)
            if advance:
                advance(len(batch))
            if progress:
                progress(f"{lm.spec.name} {variant} k={k} {batch[0].benchmark}: {stats.n_done}/{len(todo)}")
    return stats
