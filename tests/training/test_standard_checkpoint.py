"""A saved checkpoint is a standard Qwen2.5-VL checkpoint: plain transformers Auto classes load it whole (issue 17
point 1). Only plain transformers calls touch the saved folder here; our own loader is not used."""

import importlib.util
import json
import os

import pytest
import torch
from transformers import (AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
                          Qwen2_5_VLProcessor)

from medlvr.training.model import LATENT_TOKENS, save_checkpoint
from tests.training.conftest import random_image

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None

# The file set `Qwen2_5_VLForConditionalGeneration.save_pretrained` + `Qwen2_5_VLProcessor.save_pretrained` write
# in transformers 5.24 (unified processor_config.json, chat_template.jinja), plus our K record.
QWEN25_FILES = {"config.json", "generation_config.json", "model.safetensors", "processor_config.json",
                "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"}

# preprocessor_config.json as released with Qwen/Qwen2.5-VL-7B-Instruct (the hub's official layout)
RELEASED_PREPROCESSOR_CONFIG = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    return save_checkpoint(tiny.model, tiny.processor, tmp_path_factory.mktemp("std") / "model", k_latent=2)


def test_file_set_and_modes_are_those_of_a_qwen25_checkpoint(ckpt):
    names = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    # plus our K record and the latent loop for plain transformers (trust_remote_code; test_portable_generate.py)
    assert names == QWEN25_FILES | {"medlvr_latent.json", "custom_generate/generate.py"}
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in ckpt.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~mask}, modes  # model.safetensors was 0600 (mkstemp)


def test_processor_config_names_the_standard_classes(ckpt):
    cfg = json.loads((ckpt / "processor_config.json").read_text())
    assert cfg["processor_class"] == "Qwen2_5_VLProcessor"
    assert cfg["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    assert cfg["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg["processor_class"] == "Qwen2_5_VLProcessor"
    assert not [p.name for p in ckpt.rglob("*") if p.is_file() and b"ImageOnly" in p.read_bytes()]  # our class is internal


def test_auto_image_processor_turns_an_image_into_patches(tiny, ckpt):
    ip = AutoImageProcessor.from_pretrained(ckpt)
    out = ip(images=[random_image(70, 90, seed=1)], return_tensors="pt")
    ours = tiny.processor.image_processor(images=[random_image(70, 90, seed=1)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == ours["image_grid_thw"].tolist()  # the saved pixel budget is kept
    if type(ip).__name__ != type(tiny.processor.image_processor).__name__:  # torchvision backend: its resize, not PIL's
        diff = (out["pixel_values"] - ours["pixel_values"]).abs()
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.25
    else:
        assert torch.equal(out["pixel_values"], ours["pixel_values"])


def test_auto_tokenizer_has_control_tokens_and_chat_template(tiny, ckpt):
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.convert_tokens_to_ids(list(LATENT_TOKENS))
    assert ids == [tiny.ids.start, tiny.ids.latent, tiny.ids.end]
    assert tok.decode([tiny.ids.latent]) == "<Medlvr_Latent>"  # one token each, special
    assert tok.encode("<Medlvr_Start>", add_special_tokens=False) == [tiny.ids.start]
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Q?" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.skipif(HAS_TORCHVISION, reason="the error is the one transformers raises without torchvision")
def test_auto_processor_without_torchvision_fails_loudly_like_a_released_checkpoint(ckpt, tmp_path):
    """Never a bare tokenizer that drops the image (the old behaviour): the same error as on a folder in the
    layout Qwen2.5-VL is released in, because the standard processor's video half needs torchvision."""
    released = tmp_path / "released"
    released.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (released / name).write_bytes((ckpt / name).read_bytes())
    (released / "preprocessor_config.json").write_text(json.dumps(RELEASED_PREPROCESSOR_CONFIG))
    errors = []
    for folder in (ckpt, released):
        with pytest.raises(ImportError, match="Torchvision") as e:
            AutoProcessor.from_pretrained(folder)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    with pytest.raises(ImportError, match="Torchvision"):
        Qwen2_5_VLProcessor.from_pretrained(ckpt)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="AutoProcessor builds Qwen2.5-VL's video processor: torchvision")
def test_auto_processor_with_torchvision_keeps_the_image(ckpt):
    proc = AutoProcessor.from_pretrained(ckpt)
    assert isinstance(proc, Qwen2_5_VLProcessor)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}],
                                    tokenize=False, add_generation_prompt=True)
    out = proc(text=[text], images=[random_image(56, 84, seed=2)], return_tensors="pt")
    assert "pixel_values" in out and "image_grid_thw" in out


def _inputs(tok, ip, image):
    """What Qwen2_5_VLProcessor does for one image, spelled out with the tokenizer and image processor (its
    construction needs torchvision): one <|image_pad|> per merged patch."""
    vision = ip(images=[image], return_tensors="pt")
    n_pad = int(vision["image_grid_thw"][0].prod()) // ip.merge_size ** 2
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
                                   tokenize=False, add_generation_prompt=True)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n_pad)
    enc = tok([text], return_tensors="pt")
    return {**enc, **vision}


def test_auto_model_generates_from_the_image(ckpt):
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    ip = AutoImageProcessor.from_pretrained(ckpt)
    seen = []
    hook = model.model.visual.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    scores = []
    try:
        for seed in (3, 4):
            inputs = _inputs(tok, ip, random_image(56, 84, seed=seed))
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
            assert out.sequences.shape[1] > inputs["input_ids"].shape[1]
            scores.append(out.scores[0])
    finally:
        hook.remove()
    assert len(seen) == 2 and seen[0][0] == inputs["pixel_values"].shape[0]  # the vision tower saw the patches
    assert not torch.allclose(scores[0], scores[1])  # and the image changes what is generated
