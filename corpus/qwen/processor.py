"""Qwen2.5-VL processor construction and loading without torchvision.

transformers 5.x pitfalls handled here (see docs/training.md §6.1 items 1–2):

* `Qwen2_5_VLProcessor.__init__` type-checks every attribute named in its signature, including
  `video_processor`; without torchvision that check crashes. `ImageOnlyQwen2_5_VLProcessor` drops the video
  processor from the signature, so `get_attributes()` no longer lists it.
* A checkpoint must still look like any Qwen2.5-VL checkpoint to plain transformers, so the image-only processor
  SAVES the standard layout (`standard_processor_dict`): `processor_class: Qwen2_5_VLProcessor`, the image
  processor under its standard name `Qwen2VLImageProcessor` (which `AutoImageProcessor` resolves to the PIL
  backend when torchvision is missing) and a `Qwen2VLVideoProcessor` section. `AutoProcessor.from_pretrained`
  then behaves exactly as on a released Qwen2.5-VL checkpoint: the full processor with torchvision, a loud
  "requires the Torchvision library" error without it (never a bare tokenizer that drops images). Our own loader
  (`load_processor`) reads the same files through the concrete class.
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


STANDARD_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
STANDARD_VIDEO_PROCESSOR_CLASS = "Qwen2VLVideoProcessor"


def standard_video_processor_dict(image_processor) -> dict:
    """The `video_processor` section `Qwen2_5_VLProcessor.save_pretrained` writes, built without torchvision.

    `Qwen2VLVideoProcessor` cannot be instantiated here (it imports torchvision), so its saved form is spelled out:
    the class defaults for the frame budget (videos are never trained on), the patch geometry and normalisation
    of `image_processor` so that a video frame would be patched like an image.
    """
    return {
        "video_processor_type": STANDARD_VIDEO_PROCESSOR_CLASS,
        "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},  # Qwen2VLVideoProcessor.size
        "patch_size": image_processor.patch_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
        "merge_size": image_processor.merge_size,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": image_processor.rescale_factor,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_sample_frames": False,
    }


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (works without torchvision).

    Omitting `video_processor` from the `__init__` signature removes it from `get_attributes()`, which is what
    `ProcessorMixin` type-checks and loads. What it saves is the standard Qwen2.5-VL layout (`to_dict`), so the
    class name never reaches a checkpoint.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # the saved standard `video_processor` section comes back as a keyword on load; it is not used here (and
        # naming it in the signature would make `ProcessorMixin` type-check it, which needs torchvision)
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        files = super().save_pretrained(save_directory, **kwargs)
        # ProcessorMixin stamped the tokenizer with this class's name (tokenizer_config.json's processor_class):
        # a checkpoint names the standard class there too
        self.tokenizer._set_processor_class(STANDARD_PROCESSOR_CLASS)
        self.tokenizer.save_pretrained(save_directory)
        return files

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["processor_class"] = STANDARD_PROCESSOR_CLASS
        out["video_processor"] = standard_video_processor_dict(self.image_processor)
        return out


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
