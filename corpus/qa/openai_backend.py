"""OpenAI-compatible chat endpoint backend (e.g. a vLLM server) for QA text generation, on the project's one
endpoint client (`medlvr.corpus.chat_endpoint`: the `openai` SDK with an overall deadline per attempt, a shared
concurrency limit, retries honouring `Retry-After` with jittered exponential backoff).

* Image as a base64 PNG data URL in an `image_url` content part, then the prompt text.
* A request that fails for good gives None (logged as one line); the cache stores only verified replies.
* The box is rendered as Qwen2.5-VL absolute pixels of the server-side resize (`min_pixels`/`max_pixels`,
  Qwen2.5-VL's released defaults unless configured).
"""

from __future__ import annotations

import logging

from medlvr.corpus.chat_endpoint import ChatEndpoint, EndpointError, EndpointSettings, image_part
from medlvr.corpus.qa.requests import GeneratorConfig, GenRequest, render_prompt
from medlvr.corpus.qwen.format import QWEN25_MAX_PIXELS, QWEN25_MIN_PIXELS, model_box, png_size

log = logging.getLogger(__name__)


class OpenAIBackend:
    def __init__(self, cfg: GeneratorConfig):
        if not cfg.base_url or not cfg.model:
            raise ValueError("openai backend needs base_url (e.g. http://host:8000/v1) and model")
        self.cfg = cfg
        self.model_id = f"openai:{cfg.model}"
        self.cache_params = f"max_new_tokens={cfg.max_new_tokens};temperature={cfg.temperature}"
        self._min_pixels = cfg.min_pixels or QWEN25_MIN_PIXELS
        self._max_pixels = cfg.max_pixels or QWEN25_MAX_PIXELS
        self.client = ChatEndpoint(EndpointSettings(
            base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env, max_concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s, temperature=cfg.temperature))

    @property
    def stats(self) -> dict:
        return self.client.stats

    def messages(self, req: GenRequest) -> list[dict]:
        content: list[dict] = []
        box_px = None
        if req.image_png is not None:
            content.append(image_part(req.image_png))
            if req.box is not None:
                box_px = model_box(req.box, png_size(req.image_png), self._min_pixels, self._max_pixels)
        content.append({"type": "text", "text": render_prompt(req, box_px)})
        messages = [{"role": "user", "content": content}]
        if self.cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return messages

    def generate(self, reqs: list[GenRequest]) -> list[str | None]:
        out: list[str | None] = [None] * len(reqs)
        for i, reply in self.client.complete_each(reqs, lambda r: (self.messages(r), self.cfg.max_new_tokens)):
            if isinstance(reply, EndpointError):
                log.warning("openai request failed: %s", reply)
            else:
                out[i] = reply.text
        return out
