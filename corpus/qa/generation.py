"""One generator interface for the VLM text of the QA corpus (issue 3, datasets.md §6.5-6.6).

QA pairs are built deterministically from structured records elsewhere; a generator only *words* things:
fine-grained region descriptions (`region_caption`) and question paraphrases (`paraphrase`) from retrieved
graph facts. It never decides a box or a label: those travel in the request as `box` / `locked`, and the
verifier (`corpus.qa.verify`) rejects outputs that drop a locked string or invent a box.

Backends (chosen by `GeneratorConfig.backend`):
* `template`     deterministic and offline, the default (`corpus.qa.template_backend`);
* `transformers` a local Qwen2.5-VL checkpoint directory, batched generation (`corpus.qa.transformers_backend`);
* `openai`       an OpenAI-compatible /v1/chat/completions endpoint, e.g. vLLM (`corpus.qa.openai_backend`).
`make_backend` wraps the two model backends in the on-disk response cache when `cache_dir` is set.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field, fields as dc_fields
from typing import Any, Protocol, runtime_checkable

TASKS = ("region_caption", "paraphrase")
BACKENDS = ("template", "transformers", "openai")

# Where a prompt wants the model-specific box text. Plain str.replace (never str.format): retrieved facts may
# contain braces of their own.
BOX_SLOT = "{box}"

# Qwen2.5-VL's released preprocessor_config.json; a vLLM server resizes with these unless told otherwise.
QWEN25_MIN_PIXELS = 56 * 56
QWEN25_MAX_PIXELS = 28 * 28 * 16384
QWEN25_FACTOR = 28  # patch_size 14 x spatial merge 2: resized sides are multiples of this


@dataclass(frozen=True)
class GenRequest:
    """One text to generate. `box` is xyxy floats in the normalised image `image_png`; `locked` strings must
    appear verbatim in the output; `fields` holds the structured facts (label, modality, position, size_mm,
    facts, question) that the template backend words and that model prompts were built from."""

    task: str
    prompt: str
    image_png: bytes | None = None
    box: tuple[float, float, float, float] | None = None
    locked: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.box is not None:
            if len(self.box) != 4:
                raise ValueError(f"box must be xyxy (4 numbers), got {self.box!r}")
            x1, y1, x2, y2 = (float(v) for v in self.box)
            if not (x2 > x1 and y2 > y1):
                raise ValueError(f"box must have x2 > x1 and y2 > y1, got {self.box!r}")
            object.__setattr__(self, "box", (x1, y1, x2, y2))  # normalise lists / ints for stable keys
        # a list would make the frozen request compare/key differently from the same tuple
        object.__setattr__(self, "locked", tuple(self.locked))


@runtime_checkable
class Backend(Protocol):
    """`generate` returns one entry per request, in order; None means that request failed after retries."""

    model_id: str

    def generate(self, reqs: list[GenRequest]) -> list[str | None]: ...


@dataclass
class GeneratorConfig:
    backend: str = "template"
    model_path: str | None = None  # transformers: local checkpoint directory (never a hub id)
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1 (".../chat/completions" is appended)
    model: str | None = None  # openai: served model name; transformers: optional model_id override
    api_key_env: str | None = "OPENAI_API_KEY"  # name of the env var holding the key (keys never in configs)
    concurrency: int = 8  # openai: simultaneous HTTP requests
    timeout_s: float = 120.0  # openai: per-request socket timeout
    max_retries: int = 3  # retries after the first attempt (so at most 1 + max_retries attempts)
    backoff_s: float = 1.0  # first retry waits this long, then doubles
    backoff_max_s: float = 30.0
    batch_size: int = 8  # transformers: prompts per generate() call
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy (reproducible); > 0 samples
    cache_dir: str | None = None  # on-disk response cache for the model backends
    device: str = "cpu"  # transformers: cpu | cuda | cuda:N | auto
    dtype: str = "float32"  # transformers: float32 | bfloat16 | float16 | auto
    attn_implementation: str = "sdpa"
    min_pixels: int | None = None  # Qwen2.5-VL resize bounds; None = the processor's own (openai: Qwen defaults)
    max_pixels: int | None = None
    system_prompt: str | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.concurrency < 1 or self.batch_size < 1 or self.max_retries < 0:
            raise ValueError("concurrency and batch_size must be >= 1 and max_retries >= 0")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_new_tokens < 1 or self.temperature < 0:
            raise ValueError("timeout_s > 0, backoff_s >= 0, max_new_tokens >= 1 and temperature >= 0 required")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "GeneratorConfig":
        """Build from a parsed YAML/JSON mapping; unknown keys are an error (a typo must not be ignored)."""
        d = dict(d or {})
        known = {f.name: f for f in dc_fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown generator config keys: {unknown} (known: {sorted(known)})")
        ints = ("concurrency", "max_retries", "batch_size", "max_new_tokens")
        floats = ("timeout_s", "backoff_s", "backoff_max_s", "temperature")
        for k in ints:
            if k in d:
                d[k] = int(d[k])
        for k in floats:
            if k in d:
                d[k] = float(d[k])
        for k in ("min_pixels", "max_pixels"):
            if d.get(k) is not None:
                d[k] = int(d[k])
        return cls(**d)


def make_backend(cfg: GeneratorConfig) -> Backend:
    """The configured backend; model backends are wrapped in `CachedBackend` when `cache_dir` is set.

    The template backend is never cached: it makes no calls, and a sqlite round trip per text would cost more
    than generating it again.
    """
    if cfg.backend == "template":
        from corpus.qa.template_backend import TemplateBackend

        return TemplateBackend()
    if cfg.backend == "transformers":
        from corpus.qa.transformers_backend import TransformersBackend

        backend: Backend = TransformersBackend(cfg)
    else:
        from corpus.qa.openai_backend import OpenAIBackend

        backend = OpenAIBackend(cfg)
    if cfg.cache_dir:
        from corpus.qa.cache import CachedBackend

        return CachedBackend(backend, cfg.cache_dir)
    return backend


# ---------------------------------------------------------------------------------------------------------------
# Box rendering shared by the model backends (Qwen2.5-VL: absolute pixels of the model's resized image).


def smart_resize(height: int, width: int, factor: int = QWEN25_FACTOR, min_pixels: int = QWEN25_MIN_PIXELS,
                 max_pixels: int = QWEN25_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's resize rule (same arithmetic as transformers' `smart_resize`), kept here so the openai
    backend can render boxes without importing transformers."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be < 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def png_size(image_png: bytes) -> tuple[int, int]:
    """(height, width) from the PNG header (PIL reads only the header here)."""
    from PIL import Image

    with Image.open(io.BytesIO(image_png)) as im:
        return im.height, im.width


def model_box(box, image_hw: tuple[int, int], min_pixels: int = QWEN25_MIN_PIXELS,
              max_pixels: int = QWEN25_MAX_PIXELS, factor: int = QWEN25_FACTOR) -> tuple[int, int, int, int]:
    """`box` (xyxy in the normalised image of size `image_hw`) in absolute pixels of the image the model sees
    after its own resize; rounded and clamped to the resized image."""
    h, w = image_hw
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    sx, sy = rw / w, rh / h
    x1, y1, x2, y2 = box
    out = (round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy))
    return (min(max(out[0], 0), rw), min(max(out[1], 0), rh), min(max(out[2], 0), rw), min(max(out[3], 0), rh))


def render_prompt(req: GenRequest, box_px: tuple[int, int, int, int] | None) -> str:
    """The prompt with the rendered box in `BOX_SLOT`, or appended when the prompt has no slot."""
    if box_px is None:
        return req.prompt.replace(BOX_SLOT, "the marked region")
    box_text = "[{}, {}, {}, {}]".format(*box_px)
    if BOX_SLOT in req.prompt:
        return req.prompt.replace(BOX_SLOT, box_text)
    return f"{req.prompt}\nRegion (x1, y1, x2, y2 in pixels): {box_text}"


def stable_hash(*parts: Any) -> str:
    """sha256 hex of a canonical JSON encoding: stable across processes and Python versions (unlike hash())."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return "sha256:" + hashlib.sha256(o).hexdigest()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    return repr(o)
