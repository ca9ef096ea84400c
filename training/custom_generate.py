"""MedLVR's latent decoding behind transformers' `custom_generate` interface (plain transformers, no MedLVR).

Every saved model folder carries `custom_generate/generate.py`, bundled from this module and the modules of the
latent loop it uses (`medlvr.training.portable_generate`), so that

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)   # generate replaced
    out = model.generate(**processor_batch, max_new_tokens=64)
    # or, on a model loaded without it:
    out = model.generate(**processor_batch, custom_generate=folder, trust_remote_code=True)

decodes as `medlvr ask` and `medlvr evaluate` do: `<Medlvr_Start>` forced, K fed-back hidden states, `<Medlvr_End>`
forced, then text (`latent_generate`, the one implementation of the loop). K is the folder's
(`medlvr_latent.json`) unless `k_latent=` says otherwise.

Import-free of `medlvr`: it imports torch, transformers and the names of the modules bundled before it
(`latent_tokens`, `sampling`, `vlm_inputs`, `bottleneck`, `latent_decode`); the bundler strips those imports.

Arguments, as `generate` takes them (keywords): the processor batch (`input_ids`, `attention_mask`,
`pixel_values`, `image_grid_thw`, `mm_token_type_ids`), `max_new_tokens` (text tokens after the latent segment,
as `medlvr ask --max-new-tokens`; the K + 2 segment positions come on top; default 64), `do_sample`,
`temperature`, `top_p`, `num_return_sequences`, `generation_config`, `return_dict_in_generate`, and MedLVR's own
`k_latent` and `model_dir` (where `medlvr_latent.json` and the tokenizer are; default the folder the model was
loaded from). Options the latent loop does not implement (beam search, logits processors, stopping criteria,
streamers, assistant models, ...) are a ValueError rather than silently ignored.

Returns the prompt ids followed by the generated ids, `<Medlvr_Latent>` at the latent slots, pad after the end
(a LongTensor, as `generate` does); with `return_dict_in_generate=True` a `MedLVRGenerateOutput` that adds the
latent states fed back (`latent_states`, (N, K, D)), the hidden states they came from (`latent_means`) and the
number of latent slots per row (`n_latent`).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer
from transformers.utils import ModelOutput

from medlvr.training.bottleneck import set_text_blind
from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.latent_tokens import LatentTokenIds, eos_token_ids

LATENT_INFO_FILE = "medlvr_latent.json"
DEFAULT_MAX_NEW_TOKENS = 64  # `medlvr ask`'s answer budget
PROMPT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
# generate arguments the latent loop does not implement: an error when given, never silently dropped
UNSUPPORTED = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "assistant_model", "streamer",
               "negative_prompt_ids", "negative_prompt_attention_mask", "synced_gpus", "inputs_embeds",
               "past_key_values", "pixel_values_videos", "video_grid_thw")


@dataclass
class MedLVRGenerateOutput(ModelOutput):
    """sequences (N, L + T): prompt then generated ids; latent_states / latent_means (N, K, D); n_latent (N,)."""

    sequences: torch.Tensor | None = None
    latent_states: torch.Tensor | None = None
    latent_means: torch.Tensor | None = None
    n_latent: torch.Tensor | None = None


def read_latent_info(model_dir) -> dict | None:
    """The folder's `medlvr_latent.json` as written by MedLVR's save, None without the file."""
    path = os.path.join(str(model_dir), LATENT_INFO_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_k_latent(model_dir) -> int | None:
    """K recorded in the folder (`medlvr_latent.json`: 0 when the latent segment is off), None without the file."""
    info = read_latent_info(model_dir)
    if info is None:
        return None
    return int(info["k_latent"]) if info.get("latent", True) else 0


@functools.lru_cache(maxsize=8)
def _token_ids(model_dir: str) -> LatentTokenIds:
    return LatentTokenIds.from_tokenizer(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))


def _setting(name, kwargs, generation_config, default):
    if kwargs.get(name) is not None:
        return kwargs.pop(name)
    kwargs.pop(name, None)
    value = getattr(generation_config, name, None) if generation_config is not None else None
    return default if value is None else value


def generate(model, inputs=None, generation_config=None, k_latent=None, model_dir=None, **kwargs):
    """transformers' custom generate entry point (module docstring)."""
    for name in UNSUPPORTED:
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"MedLVR latent decoding does not support `{name}`")
    gcfg = generation_config if generation_config is not None else model.generation_config
    model_dir = str(model_dir or model.name_or_path or "")
    if k_latent is None:
        k_latent = read_k_latent(model_dir) if model_dir else None
        if k_latent is None:
            raise ValueError(f"no {LATENT_INFO_FILE} in {model_dir!r}: pass k_latent=K (or model_dir=<the folder>)")
    # a model trained text-blind decodes with the prompt text after the image barred from it, as MedLVR's own load
    # restores it (training/bottleneck.py); without this the portable loop would answer as a different model
    set_text_blind(model, bool((read_latent_info(model_dir) or {}).get("text_blind", False)) if model_dir else False)
    if int(_setting("num_beams", kwargs, gcfg, 1)) != 1:
        raise ValueError("MedLVR latent decoding does not support beam search (num_beams > 1)")
    if inputs is not None:
        kwargs.setdefault("input_ids", inputs)
    if kwargs.get("input_ids") is None:
        raise ValueError("generate needs input_ids (the processor's output)")
    prompts = {k: kwargs.pop(k) for k in PROMPT_KEYS if kwargs.get(k) is not None}
    prompts.setdefault("attention_mask", torch.ones_like(prompts["input_ids"]))
    do_sample = bool(_setting("do_sample", kwargs, gcfg, False))
    max_new = int(_setting("max_new_tokens", kwargs, gcfg, DEFAULT_MAX_NEW_TOKENS))
    eos = kwargs.pop("eos_token_id", None)
    eos = eos_token_ids(model) if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))
    cfg = DecodeConfig(
        k_latent=int(k_latent),
        max_new_tokens=max_new + int(k_latent) + 2 if k_latent else max_new,
        force_start=int(k_latent) > 0,
        temperature=float(_setting("temperature", kwargs, gcfg, 1.0)) if do_sample else 0.0,
        top_p=float(_setting("top_p", kwargs, gcfg, 1.0)) if do_sample else 1.0,
        num_samples=int(_setting("num_return_sequences", kwargs, gcfg, 1)),
        eos_token_ids=eos,
    )
    return_dict = bool(_setting("return_dict_in_generate", kwargs, gcfg, False))
    kwargs.pop("use_cache", None)  # the loop always uses its KV cache
    unknown = sorted(k for k, v in kwargs.items() if v is not None)
    if unknown:
        raise ValueError(f"MedLVR latent decoding does not support {', '.join(f'`{k}`' for k in unknown)}")
    ids = _token_ids(model_dir)
    out = latent_generate(model, prompts, ids, cfg)
    prompt_ids = prompts["input_ids"].to(out.sequences.device).repeat_interleave(cfg.num_samples, dim=0)
    sequences = torch.cat([prompt_ids, out.sequences], dim=1)
    if not return_dict:
        return sequences
    return MedLVRGenerateOutput(sequences=sequences, latent_states=out.z, latent_means=out.mu, n_latent=out.n_latent)
