"""One generator interface for the VLM text of the QA corpus (issue 3, docs/datasets.md §6.5-6.6).

QA pairs are built deterministically from structured records elsewhere; a generator only *words* things:
fine-grained region descriptions (`region_caption`) and question paraphrases (`paraphrase`) from retrieved
graph facts. It never decides a box or a label: those travel in the request as `box` / `locked`, and the
verifier (`medlvr.corpus.qa.verify`) rejects outputs that drop a locked string or invent a box.

Backends (chosen by `GeneratorConfig.backend`):
* `template`     deterministic and offline, the default (`medlvr.corpus.qa.template_backend`);
* `transformers` a local Qwen2.5-VL checkpoint directory, batched generation (`medlvr.corpus.qa.transformers_backend`);
* `openai`       an OpenAI-compatible /v1/chat/completions endpoint, e.g. vLLM (`medlvr.corpus.qa.openai_backend`).
Request types and the config live in `medlvr.corpus.qa.requests`. `make_backend` wraps the two model backends in the on-disk response cache when `cache_dir` is set.
"""

from __future__ import annotations

from medlvr.corpus.qa.cache import CachedBackend
from medlvr.corpus.qa.openai_backend import OpenAIBackend
from medlvr.corpus.qa.requests import Backend, GeneratorConfig
from medlvr.corpus.qa.template_backend import TemplateBackend


def make_backend(cfg: GeneratorConfig) -> Backend:
    """The configured backend; model backends are wrapped in `CachedBackend` when `cache_dir` is set.

    The template backend is never cached: it makes no calls, and a sqlite round trip per text would cost more
    than generating it again.
    """
    if cfg.backend == "template":
        return TemplateBackend()
    if cfg.backend == "transformers":
        from medlvr.corpus.qa.transformers_backend import TransformersBackend  # imports torch + transformers

        backend: Backend = TransformersBackend(cfg)
    else:
        backend = OpenAIBackend(cfg)
    if cfg.cache_dir:
        return CachedBackend(backend, cfg.cache_dir)
    return backend


# ---------------------------------------------------------------------------------------------------------------
# Box rendering shared by the model backends (Qwen2.5-VL: absolute pixels of the model's resized image).


