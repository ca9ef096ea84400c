"""Shared tiny Qwen2.5-VL (built once per session, offline) and a prompt-batch builder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.training.tiny import TinyConfig, build_tiny  # noqa: E402
from tests.qwen_real import real_qwen_tokenizer  # noqa: E402

QUESTIONS = [
    "Describe the scan.",
    "What is the most likely diagnosis? Answer briefly.",
    "Which organ is abnormal? A. liver B. kidney C. spleen D. lung.",
    "Is there a pleural effusion?",
]


@pytest.fixture(scope="session")
def tiny():
    """TinyBundle(model, processor, ids). Shared: tests that change weights must deepcopy the model.

    One intra-op thread while it is in use: the tiny model gains nothing from more, and OpenMP threads that spin
    on a shared 2-core machine (other test suites running) made the module about 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny(seed=0)
    torch.set_num_threads(threads)


def random_image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def make_batch(tiny):
    """make_batch([(h, w), ...], first=0) -> left-padded processor batch, one image + question per prompt.

    Prompt i (numbered from `first`) has a random image seeded by i, question i mod 4, and the image before the
    text for even i, after it for odd i: prompts differ in length, image size and image position.
    `make_batch([sizes[i]], first=i)` is prompt i of `make_batch(sizes)` on its own (no padding).
    """
    proc = tiny.processor

    def make(sizes, first=0):
        texts, images = [], []
        for i, (h, w) in enumerate(sizes, start=first):
            q = {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}
            content = [{"type": "image"}, q] if i % 2 == 0 else [q, {"type": "image"}]
            texts.append(proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True))
            images.append(random_image(h, w, seed=i))
        return proc(text=texts, images=images, padding=True, return_tensors="pt")

    return make


@pytest.fixture(scope="session")
def real_qwen():
    """TinyBundle with the REAL Qwen2.5 tokenizer (tests/qwen_real.py) and the padded 7B vocabulary 152,064; the
    decoder and vision tower are tiny. Shared like `tiny`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny(seed=0, cfg=TinyConfig(vocab_size=152064), tokenizer=real_qwen_tokenizer())
    torch.set_num_threads(threads)


@pytest.fixture(params=["tiny", "real_qwen"])
def any_tokenizer_bundle(request):
    """Runs a test with the tiny BPE and with the real Qwen2.5 tokenizer."""
    return request.getfixturevalue(request.param)
