"""Benchmark inference against an OpenAI-compatible chat endpoint (a baseline served by vLLM / SGLang, or a hosted
API), written as the same resumable prediction JSONL as local models (`medlvr.evaluation.inference`), so the same
parser scores it and it lands in the same tables.

* Prompt: the local models' user text (`prompt_text`, the model's `prompt_style`), images first as base64 PNG data
  URLs in the chat format. Each image is scaled down (never up) to the run's pixel budget (`decode.max_pixels`), the
  budget every local model gets; the server may resize further (Qwen2.5-VL servers do).
* `max_tokens` = `decode.max_new_tokens`, temperature from the endpoint settings (0 = greedy).
* Records: the local fields; `n_tokens` is the server's completion token count (None when it reports none),
  `k_latent` / `n_latent` what the server reports in its reply's `medlvr` field (`medlvr serve` does: the served
  model's K), else 0 (a plain server decodes without a latent segment),
  `latency_s` the request's wall time (retries included), `finish_reason` the server's ("length": truncated), plus `attempts`.
* Resume: written as each reply arrives; ids already in the file are not asked again. A request that fails for
  good (after the client's retries) writes nothing, so the next run asks it again; `EndpointRunStats.failed`
  counts them with the last reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from medlvr.corpus.chat_endpoint import ChatEndpoint, EndpointError, image_part
from medlvr.corpus.evalsets.base import Sample
from medlvr.evaluation.config import DecodeSettings, ModelSpec
from medlvr.evaluation.inference import open_sample_image, pending_samples, prompt_text


@dataclass
class EndpointRunStats:
    n_done: int = 0
    n_skipped: int = 0
    failed: int = 0
    last_error: str = ""
    gen_s: float = 0.0  # wall time of the whole job (requests overlap)


def png_within_budget(im: Image.Image, max_pixels: int) -> bytes:
    """The image as PNG bytes, scaled down (aspect kept) so that width * height <= max_pixels."""
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        im = im.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def chat_messages(sample: Sample, style: str, max_pixels: int, root: Path | None = None) -> list[dict]:
    """The chat request; an unreadable image is one BenchmarkError line naming benchmark, file (relative to the
    benchmark root `root`) and record, like local inference (`open_sample_image`)."""
    content = [image_part(png_within_budget(open_sample_image(sample, u, root), max_pixels)) for u in sample.images]
    content.append({"type": "text", "text": prompt_text(sample, style)})
    return [{"role": "user", "content": content}]


def served_latents(medlvr: dict | None) -> tuple[int, int]:
    """(K, latent states fed back) from a reply's `medlvr` field; (0, 0) when the server sent none."""
    medlvr = medlvr or {}
    k, n = medlvr.get("k_latent"), medlvr.get("n_latent")
    return (k if isinstance(k, int) and k >= 0 else 0), (n if isinstance(n, int) and n >= 0 else 0)


def text_tokens(completion_tokens: int | None, n_latent: int) -> int | None:
    """The sampled tokens of a reply: the completion count less the latent segment (start, states, end), which a
    latent server counts as generated positions, as local decoding does in `n_tokens`."""
    if completion_tokens is None or not n_latent:
        return completion_tokens
    return max(0, completion_tokens - n_latent - 2)


def run_endpoint_predictions(
    client: ChatEndpoint,
    spec: ModelSpec,
    samples: Sequence[Sample],
    out_path: Path,
    *,
    variant: str = "main",
    settings: DecodeSettings = DecodeSettings(),
    rank: int = 0,
    world_size: int = 1,
    advance: Callable[[int], None] | None = None,
    benchmark_root: Path | None = None,
) -> EndpointRunStats:
    """Ask the endpoint for this rank's shard of `samples` not yet in `out_path`; append one record per reply.
    `advance(n)` is called with the number of samples just finished (answered, failed, or already in the file)."""
    my_path, todo, n_skipped = pending_samples(
        samples, out_path, rank, world_size, advance,
        lambda s: hashlib.sha1(prompt_text(s, spec.prompt_style).encode()).hexdigest()[:12])
    stats = EndpointRunStats(n_skipped=n_skipped)
    if not todo:
        return stats
    texts = {s.sample_id: prompt_text(s, spec.prompt_style) for s in todo}
    t0 = time.perf_counter()

    def build(s: Sample):
        return chat_messages(s, spec.prompt_style, settings.max_pixels, benchmark_root), settings.max_new_tokens

    with my_path.open("a") as f:
        for i, reply in client.complete_each(todo, build):
            s = todo[i]
            if isinstance(reply, EndpointError):
                stats.failed += 1
                stats.last_error = str(reply)
            else:
                k, n_latent = served_latents(reply.medlvr)
                rec = {
                    "benchmark": s.benchmark, "sample_id": s.sample_id, "output": reply.text,
                    "n_tokens": reply.completion_tokens, "latency_s": reply.latency_s,
                    "model": spec.name, "k_latent": k, "variant": variant, "rank": rank, "world_size": world_size,
                    "n_text_tokens": text_tokens(reply.completion_tokens, n_latent), "n_latent": n_latent,
                    "finish_reason": "length" if reply.finish_reason == "length" else "stop",
                    "batch_size": 1, "batch_latency_s": reply.latency_s, "attempts": reply.attempts,
                    "prompt_hash": hashlib.sha1(texts[s.sample_id].encode()).hexdigest()[:12],
                    "ablation": None, "endpoint_model": spec.endpoint.model if spec.endpoint else None,
                }
                f.write(json.dumps(rec) + "\n")
                f.flush()  # a killed run keeps every reply so far
                stats.n_done += 1
            if advance:
                advance(1)
    stats.gen_s = time.perf_counter() - t0
    return stats
