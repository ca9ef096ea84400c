"""Qwen2.5-VL backbone with the three MedLVR control tokens (docs/method.md §1).

* `load_model` / `load_checkpoint`: `Qwen2_5_VLForConditionalGeneration` from a LOCAL directory only (a
  downloaded Qwen2.5-VL checkpoint or one written by `save_checkpoint`); never touches a model hub.
* `add_latent_tokens`: adds `<Medlvr_Start>`, `<Medlvr_Latent>`, `<Medlvr_End>` as special tokens and initialises
  their input-embedding and lm_head rows (Qwen2.5-VL-7B does not tie them; 3B does, which is handled).
* `save_checkpoint`: model (safetensors) + processor + tokenizer (+ K, `medlvr.training.checkpoints`) into one
  directory.
* `set_pixel_budget`, `eos_token_ids`, `DTYPES`: the pixel budget of the image processor, the stop ids and the
  dtype names, shared by training and evaluation. The tiny-or-checkpoint loader is `medlvr.training.loading`.

Attention defaults to `sdpa` (works on CPU); `flash_attention_2` is opt-in and only when `flash_attn` imports.
"""

from __future__ import annotations

import importlib.util
import os
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from medlvr.corpus.qwen.processor import load_processor
from medlvr.training.bottleneck import set_text_blind, text_blind_of
from medlvr.training.checkpoints import read_latent_info, write_latent_info
from medlvr.training.portable_generate import write_custom_generate
# the tokens and stop ids live in an import-free module (bundled into checkpoints); re-exported here
from medlvr.training.latent_tokens import (END_TOKEN, LATENT_TOKEN, LATENT_TOKENS, START_TOKEN,  # noqa: F401
                                          LatentTokenIds, eos_token_ids)


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # config name -> dtype


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def set_pixel_budget(processor, min_pixels: int | None, max_pixels: int | None) -> None:
    """Make the processor resize every image into [min_pixels, max_pixels] (None: keep the processor's value).

    The image processor's own `size` type is kept (a SizeDict in recent transformers), other keys untouched.
    """
    ip = processor.image_processor
    size = {k: v for k, v in ip.size.items() if v is not None} if hasattr(ip.size, "items") else dict(ip.size)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    ip.size = type(ip.size)(**size)


def resolve_attn_implementation(requested: str = "sdpa") -> str:
    """`sdpa` unless asked otherwise; `flash_attention_2` fails loudly when flash_attn is not installed."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {requested!r}")
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ImportError("attn_implementation='flash_attention_2' needs the optional `flash-attn` package (GPU only)")
    return requested


@torch.no_grad()
def add_latent_tokens(model: Qwen2_5_VLForConditionalGeneration, tokenizer) -> LatentTokenIds:
    """Add the MedLVR tokens to `tokenizer` and initialise their rows in `model`; idempotent.

    New rows of the input embedding (V, D) and lm_head (V, D) are set to the mean of the rows of the tokens the
    tokenizer had before (not of all V rows: real checkpoints pad V with untrained rows beyond len(tokenizer)).
    The embedding matrix is resized only if the tokenizer outgrows it (Qwen2.5-VL pads V, so usually it does not).
    """
    n_before = len(tokenizer)
    # replace_extra_special_tokens=False: the default would drop the vision tokens from the saved extras list
    tokenizer.add_special_tokens({"extra_special_tokens": list(LATENT_TOKENS)}, replace_extra_special_tokens=False)
    ids = LatentTokenIds.from_tokenizer(tokenizer)
    new_ids = [i for i in (ids.start, ids.latent, ids.end) if i >= n_before]
    if not new_ids:  # already present (a MedLVR checkpoint): keep the trained rows
        return ids
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    emb[new_ids] = emb[:n_before].mean(0).to(emb.dtype)
    if head.data_ptr() != emb.data_ptr():  # untied (7B); a tied head (3B) was set by the line above
        head[new_ids] = head[:n_before].mean(0).to(head.dtype)
    return ids


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
) -> Qwen2_5_VLForConditionalGeneration:
    """Load `Qwen2_5_VLForConditionalGeneration` from a local directory, in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path} (only local checkpoint directories are supported)")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path),
        dtype=dtype,
        attn_implementation=resolve_attn_implementation(attn_implementation),
        local_files_only=True,
    )
    info = read_latent_info(path)
    set_text_blind(model, bool(info and info["text_blind"]))  # the mask it was trained with (bottleneck.py)
    if info and info["latent"]:
        model.generate = types.MethodType(_generate_with_warning, model)
    return model.to(device).eval()


STOCK_GENERATE_WARNING = (
    "this is a MedLVR model (K = {k} latent steps) called through transformers' stock `generate`: the latent loop "
    "is not running, so it answers as a different model; decode with medlvr.training.latent_decode.latent_generate (what `medlvr ask` "
    "and `medlvr evaluate` use) or call generate(..., custom_generate=<the checkpoint folder>, trust_remote_code=True)"
)


def _generate_with_warning(self, *args, **kwargs):
    """A MedLVR model's `generate` as loaded by MedLVR: the stock one, with a warning the first time it is called
    without `custom_generate` (plain transformers cannot warn by itself without remote code: README, "Use the
    model elsewhere"). A bound method, so `copy.deepcopy(model)` binds it to the copy."""
    if kwargs.get("custom_generate") is None and not getattr(self, "_medlvr_warned_stock_generate", False):
        self._medlvr_warned_stock_generate = True
        info = read_latent_info(self.name_or_path) or {"k_latent": "?"}
        warnings.warn(STOCK_GENERATE_WARNING.format(k=info["k_latent"]), UserWarning, stacklevel=2)
    return type(self).generate(self, *args, **kwargs)


def load_checkpoint(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
):
    """Model + processor from one local directory, with the MedLVR tokens added if the checkpoint lacks them.

    Returns (model, processor, LatentTokenIds).
    """
    processor = load_processor(path)
    model = load_model(path, dtype=dtype, attn_implementation=attn_implementation, device=device)
    ids = add_latent_tokens(model, processor.tokenizer)
    return model, processor, ids


def save_checkpoint(model: Qwen2_5_VLForConditionalGeneration, processor, path: str | Path,
                    k_latent: int | None = None) -> Path:
    """Write model weights (safetensors), config, processor, tokenizer and chat template into `path`, and K
    (`medlvr_latent.json`) when given, so that evaluation and VLPO read it from the checkpoint.

    The folder has the file set of a Qwen2.5-VL checkpoint saved by transformers (the processor saves the standard
    layout, `medlvr.corpus.qwen.processor`), so `AutoModelForImageTextToText`, `AutoTokenizer`,
    `AutoImageProcessor` and (with torchvision) `AutoProcessor` load it; every file gets the same mode. It also
    carries `custom_generate/generate.py` (`medlvr.training.portable_generate`): with `trust_remote_code=True`,
    transformers' `generate` runs MedLVR's latent decoding with the recorded K.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    processor.save_pretrained(str(path))
    if k_latent is not None:
        write_latent_info(path, k_latent, text_blind=text_blind_of(model))
    write_custom_generate(path)  # the latent loop for plain transformers (trust_remote_code)
    apply_umask(path)
    return path


def apply_umask(folder: str | Path) -> None:
    """Give the files of `folder` the mode a plain `open()` creates (0666 minus the umask).

    transformers writes `model.safetensors` through an atomic temp file, which `mkstemp` creates 0600 while the
    json files are 0644: a checkpoint copied to a shared location would be half unreadable to the group.
    """
    mask = os.umask(0)  # the only way to read the umask is to set it; restored at once
    os.umask(mask)
    for f in Path(folder).rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~mask)
