"""Qwen2.5-VL processor construction and loading without torchvision.

transformers 5.x pitfalls handled here (see docs/training.md §6.1 items 1–2):

* `Qwen2_5_VLProcessor.__init__` type-checks every attribute named in its signature, including
  `video_processor`; without torchvision that check crashes. `ImageOnlyQwen2_5_VLProcessor` drops the video
  processor from the signature, so `get_attributes()` no longer lists it.
* `AutoProcessor.from_pretrained(dir)` on such a directory silently returns only the tokenizer, so loading always
  goes through the concrete processor class (`load_processor`).
* `Qwen2VLImageProcessor` now means the torchvision backend; the PIL backend is imported explicitly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

# Qwen2.5-VL style chat template (system prompt first, images as <|vision_start|><|image_pad|><|vision_end|>).
# Real checkpoints ship their own template; this one is used by the tiny model and is byte-compatible with the
# Qwen2.5-VL layout for image + text user turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (works without torchvision).

    Omitting `video_processor` from the `__init__` signature removes it from `get_attributes()`, which is what
    `ProcessorMixin` type-checks, saves and loads.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def build_processor(tokenizer, image_processor=None, chat_template: str = CHAT_TEMPLATE) -> Qwen2_5_VLProcessor:
    """Processor for `tokenizer`; image-only unless torchvision (hence a video processor) is available."""
    image_processor = image_processor if image_processor is not None else Qwen2VLImageProcessorPil()
    if has_torchvision():
        from transformers import Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=chat_template,
        )
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )


def load_processor(path: str | Path) -> Qwen2_5_VLProcessor:
    """Load a processor saved with `save_pretrained` (or a downloaded Qwen2.5-VL checkpoint) from a LOCAL dir."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"processor directory not found: {path} (only local paths are supported)")
    cls = Qwen2_5_VLProcessor if has_torchvision() else ImageOnlyQwen2_5_VLProcessor
    processor = cls.from_pretrained(str(path), local_files_only=True)
    processor.tokenizer.padding_side = "left"  # generation and rollouts use left padding
    return processor
