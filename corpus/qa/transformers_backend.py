"""Local Qwen2.5-VL checkpoint backend: batched, left-padded generation; greedy by default.

Loads ONLY from a local directory (`local_files_only=True`); a hub id is refused. The box is rendered into the
prompt as Qwen2.5-VL absolute pixel coordinates of the image the processor actually feeds the model (after its
`smart_resize`), which is the coordinate system the model was grounded in.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from pathlib import Path

from medlvr.corpus.qa.requests import GeneratorConfig, GenRequest, render_prompt
from medlvr.corpus.qwen.format import model_box, png_size
from medlvr.corpus.qwen.processor import load_processor

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16", "auto")


def _load_processor(path: Path):
    """AutoProcessor first; without torchvision transformers 5 silently returns only the tokenizer for a
    Qwen2.5-VL directory (training/processor.py), so fall back to the image-only processor class there."""
    from transformers import AutoProcessor

    try:
        proc = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except (ImportError, ValueError, OSError, TypeError) as e:
        log.info("AutoProcessor failed on %s (%s); using training.processor.load_processor", path, e)
        proc = None
    if proc is None or not hasattr(proc, "image_processor"):
        proc = load_processor(path)
    proc.tokenizer.padding_side = "left"  # batched generation appends on the right: pad on the left
    return proc


def _fingerprint(path: Path) -> str:
    """Short content id of a checkpoint: config files plus weight file names and sizes. Hashing multi-GB
    weights on every start would be too slow; a retrained checkpoint changes sizes or config in practice."""
    h = hashlib.sha256()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json"):
        p = path / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    for p in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:12]


class TransformersBackend:
    def __init__(self, cfg: GeneratorConfig):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        if not cfg.model_path:
            raise ValueError("transformers backend needs model_path (a local checkpoint directory)")
        path = Path(cfg.model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}: only local checkpoint directories are supported")
        if cfg.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {cfg.dtype!r}")
        self.cfg = cfg
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.dtype == "auto":
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, cfg.dtype)
        self.device = torch.device(device)
        self.processor = _load_processor(path)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(path), dtype=dtype, attn_implementation=cfg.attn_implementation, local_files_only=True
        ).to(self.device).eval()
        self.model_id = cfg.model or f"{path.name}@{_fingerprint(path)}"
        ip = self.processor.image_processor
        self._factor = int(ip.patch_size) * int(ip.merge_size)
        self._min_pixels = cfg.min_pixels or int(ip.size["shortest_edge"])
        self._max_pixels = cfg.max_pixels or int(ip.size["longest_edge"])
        # generation settings are part of what the text depends on: the cache keys on them too
        self.cache_params = f"max_new_tokens={cfg.max_new_tokens};temperature={cfg.temperature}"
        # one model, one forward at a time: concurrent generate() calls from corpus threads are serialised
        # (batching, not threads, is what makes a local model fast)
        self._lock = threading.Lock()

    # -----------------------------------------------------------------------------------------------------------

    def _messages(self, req: GenRequest) -> str:
        box_px = None
        if req.box is not None and req.image_png is not None:
            box_px = model_box(req.box, png_size(req.image_png), self._min_pixels, self._max_pixels, self._factor)
        content = [{"type": "image"}] if req.image_png is not None else []
        content.append({"type": "text", "text": render_prompt(req, box_px)})
        messages = [{"role": "user", "content": content}]
        if self.cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _run_batch(self, reqs: list[GenRequest]) -> list[str]:
        import torch
        from PIL import Image

        texts = [self._messages(r) for r in reqs]
        # the processor pairs image tokens with images in order, so text-only prompts simply add none
        images = [Image.open(io.BytesIO(r.image_png)).convert("RGB") for r in reqs if r.image_png is not None]
        kwargs = {}
        if self.cfg.min_pixels or self.cfg.max_pixels:
            kwargs = {"min_pixels": self._min_pixels, "max_pixels": self._max_pixels}
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt", **kwargs)
        inputs = inputs.to(self.device)
        gen = {"max_new_tokens": self.cfg.max_new_tokens}
        if self.cfg.temperature > 0:
            gen.update(do_sample=True, temperature=self.cfg.temperature)
        else:
            # explicit: a checkpoint's generation_config may ask for sampling
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**inputs, **gen)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]  # left padding: every prompt ends at the same column
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [t.strip() for t in decoded]

    def generate(self, reqs: list[GenRequest]) -> list[str | None]:
        out: list[str | None] = []
        bs = self.cfg.batch_size
        for i in range(0, len(reqs), bs):
            chunk = reqs[i:i + bs]
            try:
                out.extend(self._run_batch(chunk))
            except Exception as e:  # noqa: BLE001 - e.g. out of memory on a large batch: retry one by one
                log.warning("batch of %d failed (%s: %s); retrying one by one", len(chunk), type(e).__name__, e)
                for r in chunk:
                    try:
                        out.extend(self._run_batch([r]))
                    except Exception as e1:  # noqa: BLE001 - a bad request must not sink the corpus build
                        log.warning("request failed: %s: %s", type(e1).__name__, e1)
                        out.append(None)
        return out
