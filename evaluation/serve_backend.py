"""The decoding seam of `medlvr serve`: a back end turns parsed chat requests into completions, a batch at a time.

The HTTP layer (`medlvr.evaluation.serve_app`) knows only `DecodeBackend`: `prepare` (one request: build and check
the prompt, on a worker thread while other requests decode) and `decode` (a batch of prepared requests that share a
`group`, on the one decode thread). `LatentTransformersBackend` implements it with MedLVR's latent decoding
(`latent_generate`, the same loop as `medlvr ask` / `medlvr evaluate`); a vLLM back end implements the same two
methods.

Chat requests: `messages` of the OpenAI chat format; content a string or parts `{"type": "text", "text"}` and
`{"type": "image_url", "image_url": {"url": ...}}` with a `data:` URL (base64) or, as vLLM accepts them, a
`file://` URL or an absolute path under the server's `--allowed-local-media-path`. Every bad input is a
`RequestError`: an HTTP status, an OpenAI error type/code and one line.

`max_tokens` counts the answer's tokens: the latent segment (`<Medlvr_Start>`, K latent slots, `<Medlvr_End>`)
comes on top, as in `medlvr ask` and the checkpoint's `custom_generate`. Each row of a batch stops at its own
budget or EOS; greedy rows are decoded exactly as they would be alone.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import torch
from PIL import Image, UnidentifiedImageError

from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.loading import load_model_or_tiny
from medlvr.training.model import eos_token_ids

TOP_TOKENS = 3  # tokens listed per latent state in the summary


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type and code, one-line message."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


@dataclass
class ChatRequest:
    """A parsed request: the messages with images as PIL images (text parts kept), and its decoding settings."""

    messages: list[dict]
    images: list[Image.Image]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    latent_summary: bool = False


@dataclass
class Completion:
    text: str  # the answer: what follows the latent segment
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int  # every generated position, the latent segment included
    latent: dict | None = None  # {"k_latent", "n_latent"} (the `medlvr` reply field), + "states" on request


@dataclass
class Prepared:
    request: ChatRequest
    group: tuple  # requests decode together only when their groups are equal (the sampling settings)
    prompt_tokens: int
    payload: Any = field(default=None, repr=False)  # the back end's own prepared prompt


class DecodeBackend(Protocol):
    """What `medlvr serve` needs from a decoder (the seam a vLLM back end implements)."""

    model_id: str
    max_tokens_limit: int

    def prepare(self, request: ChatRequest) -> Prepared: ...

    def decode(self, batch: list[Prepared]) -> list[Completion]: ...


# ------------------------------------------------------------------------------------------------ request parsing


def read_image_url(url: str, allowed_root: Path | None, index: int) -> Image.Image:
    """A chat image part's URL as a PIL RGB image; RequestError naming the part otherwise."""
    what = f"image {index}"
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head:
            raise RequestError(400, f"{what}: a data URL must be base64-encoded (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{what}: the data URL is not valid base64") from None
        return _open(io.BytesIO(raw), what)
    u = urlparse(url)
    if u.scheme in ("http", "https"):
        raise RequestError(400, f"{what}: remote image URLs are not fetched; send a data URL or a local path")
    if u.scheme not in ("", "file"):
        raise RequestError(400, f"{what}: unsupported image URL scheme {u.scheme!r}")
    path = Path(unquote(u.path) if u.scheme == "file" else url)
    if allowed_root is None:
        raise RequestError(400, f"{what}: local image paths need the server's --allowed-local-media-path")
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RequestError(400, f"{what}: no such file under the allowed media path") from None
    if not resolved.is_relative_to(allowed_root.resolve()):
        raise RequestError(403, f"{what}: the path is outside --allowed-local-media-path", "permission_error")
    return _open(resolved, what)


def _open(src, what: str) -> Image.Image:
    try:
        with Image.open(src) as im:
            im.load()
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise RequestError(400, f"{what}: not a readable image") from None
    except Exception as e:  # noqa: BLE001 - truncated or damaged files raise OSError, SyntaxError, struct.error...
        raise RequestError(400, f"{what}: damaged image ({type(e).__name__})") from None


UNSUPPORTED = {"stream": False, "n": 1, "logprobs": False, "tools": None, "functions": None, "stop": None,
               "response_format": None}


def parse_request(body: Any, model_id: str, max_tokens_limit: int, allowed_root: Path | None) -> ChatRequest:
    """The JSON body of POST /v1/chat/completions as a ChatRequest (RequestError for anything it cannot honour)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if body.get("model") not in (None, model_id):
        raise RequestError(404, f"model {body.get('model')!r} is not served here; /v1/models lists {model_id!r}",
                           "invalid_request_error", "model_not_found", "model")
    for key, default in UNSUPPORTED.items():
        value = body.get(key)
        if key == "response_format" and value == {"type": "text"}:
            continue  # plain text is what the server answers (harnesses send it for reasoning models' names)
        if value not in (None, default, [], ""):
            raise RequestError(400, f"`{key}` = {value!r} is not supported by medlvr serve", param=key)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list", param="messages")
    parsed, images = [], []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, "each message needs a role of system, user or assistant", param="messages")
        content = m.get("content")
        if isinstance(content, str):
            parsed.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise RequestError(400, "message content must be a string or a list of parts", param="messages")
        parts = []
        for p in content:
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                parts.append({"type": "text", "text": p["text"]})
            elif kind == "image_url":
                url = p.get("image_url", {}).get("url") if isinstance(p.get("image_url"), dict) else p.get("image_url")
                if not isinstance(url, str):
                    raise RequestError(400, f"image {len(images) + 1}: image_url needs a url", param="messages")
                images.append(read_image_url(url, allowed_root, len(images) + 1))
                parts.append({"type": "image"})
            else:
                raise RequestError(400, f"unsupported content part {kind!r} (text and image_url are)", param="messages")
        parsed.append({"role": m["role"], "content": parts})
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or max_tokens_limit
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "max_tokens must be a positive integer", param="max_tokens")
    temperature = body.get("temperature", 0.0)
    top_p = body.get("top_p", 1.0)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError(400, "temperature must be a number >= 0", param="temperature")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise RequestError(400, "top_p must be in (0, 1]", param="top_p")
    return ChatRequest(parsed, images, min(max_tokens, max_tokens_limit), float(temperature or 0.0),
                       float(top_p if temperature else 1.0), bool(body.get("medlvr_latents", False)))


# ------------------------------------------------------------------------------------------------ the back end


def left_pad_collate(encs: list[dict], pad_id: int) -> dict:
    """One left-padded batch from single-prompt processor outputs (what `processor(texts, padding=True)` gives:
    the image processor treats every image on its own, so pixel rows and grids just concatenate)."""
    width = max(e["input_ids"].shape[1] for e in encs)
    out: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        if key in encs[0]:
            rows = [torch.nn.functional.pad(e[key], (width - e[key].shape[1], 0), value=fill) for e in encs]
            out[key] = torch.cat(rows)
    with_images = [e for e in encs if e.get("pixel_values") is not None]
    if with_images:
        out["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
        out["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
    return out


class LatentTransformersBackend:
    """MedLVR's latent decoding on local weights (a checkpoint folder, or `tiny` for tests)."""

    def __init__(self, model_path: str, model_id: str, k_latent: int | None = None, max_prompt_tokens: int = 8192,
                 max_tokens_limit: int = 512, dtype: str = "float32", device: str = "cpu", seed: int = 0,
                 tiny_seed: int = 0):
        from medlvr.training.checkpoints import TINY, read_latent_info

        self.model, self.processor, self.ids = load_model_or_tiny(model_path, tiny_seed, dtype, device=device)
        info = None if model_path == TINY else read_latent_info(model_path)
        self.k = int(k_latent if k_latent is not None else (info["k_latent"] if info else 0))
        self.model_id, self.max_prompt_tokens, self.max_tokens_limit = model_id, max_prompt_tokens, max_tokens_limit
        self.eos = eos_token_ids(self.model)
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id
        self.drop = set(self.eos) | {self.pad_id}
        self.generator = torch.Generator(device=self.model.device).manual_seed(seed)

    def prepare(self, request: ChatRequest) -> Prepared:
        text = self.processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        kw = {"images": request.images} if request.images else {}
        enc = dict(self.processor(text=[text], return_tensors="pt", **kw))
        n = int(enc["input_ids"].shape[1])
        if n > self.max_prompt_tokens:
            raise RequestError(400, f"the prompt has {n} tokens; this server takes at most {self.max_prompt_tokens} "
                                    f"(--max-prompt-tokens)", code="context_length_exceeded", param="messages")
        return Prepared(request, (request.temperature, request.top_p), n, enc)

    @torch.no_grad()
    def decode(self, batch: list[Prepared]) -> list[Completion]:
        k = self.k
        budget = max(p.request.max_tokens for p in batch)
        req0 = batch[0].request
        cfg = DecodeConfig(k_latent=k, max_new_tokens=budget + k + 2 if k else budget, force_start=k > 0,
                           temperature=req0.temperature, top_p=req0.top_p, eos_token_ids=self.eos)
        prompts = left_pad_collate([p.payload for p in batch], self.pad_id)
        out = latent_generate(self.model, prompts, self.ids, cfg, generator=self.generator)
        tok = self.processor.tokenizer
        results = []
        for r, p in enumerate(batch):
            seq = out.sequences[r, : int(out.gen_mask[r].sum())].tolist()
            head = seq.index(self.ids.end) + 1 if k and self.ids.end in seq else 0
            answer = seq[head:][: p.request.max_tokens]  # this row's own budget: as if decoded alone
            stop = next((i for i, t in enumerate(answer) if t in self.eos), None)
            answer = answer if stop is None else answer[: stop + 1]
            text = tok.decode([t for t in answer if t not in self.drop], skip_special_tokens=False)
            n_latent = int(out.n_latent[r])
            # K always (an evaluation records which model answered: `k_latent` in its predictions); the states'
            # summary, which costs an lm_head pass per state, only on request
            summary = (self._summary(out.z[r, :n_latent]) if p.request.latent_summary
                       else {"k_latent": self.k, "n_latent": n_latent})
            results.append(Completion(text, "length" if stop is None else "stop", p.prompt_tokens,
                                      head + len(answer), summary))
        return results

    def _summary(self, z: torch.Tensor) -> dict:
        """Per fed-back latent state: its norm and the tokens it reads as (the lm_head's top tokens)."""
        tok = self.processor.tokenizer
        if z.shape[0] == 0:
            return {"k_latent": self.k, "n_latent": 0, "states": []}
        logits = self.model.lm_head(z.to(self.model.lm_head.weight.dtype)).float()
        top = logits.topk(TOP_TOKENS, dim=-1).indices.tolist()
        norms = z.float().norm(dim=-1).tolist()
        return {"k_latent": self.k, "n_latent": int(z.shape[0]),
                "states": [{"norm": round(n, 4), "reads_as": [tok.decode([t]) for t in ts]}
                           for n, ts in zip(norms, top)]}
