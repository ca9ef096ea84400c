"""What a QA text generator is asked for and how it is configured: the request type, the backend protocol, the
generator config, prompt rendering and the stable hash the caches key on. The back ends and `generation.py` import
this module; it imports none of them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


TASKS = ("region_caption", "paraphrase")


BACKENDS = ("template", "transformers", "openai")


# Where a prompt wants the model-specific box text. Plain str.replace (never str.format): retrieved facts may
# contain braces of their own.
BOX_SLOT = "{box}"


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
    """The QA text generator; loaded as the `generator` section of a build config (`medlvr.corpus.config`: unknown
    keys and wrong types are errors there, the value ranges are checked here)."""

    backend: str = "template"
    model_path: str | None = None  # transformers: local checkpoint directory (never a hub id)
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1 (".../chat/completions" is appended)
    model: str | None = None  # openai: served model name; transformers: optional model_id override
    api_key_env: str | None = "OPENAI_API_KEY"  # name of the env var holding the key (keys never in configs)
    concurrency: int = 8  # openai: simultaneous HTTP requests
    timeout_s: float = 120.0  # openai: overall deadline per attempt (connect + the whole reply)
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
