"""ROI-SFT pure parts: losses (hand-computed), LR schedule, ROI box rules, config, DeepSpeed config, shard stream,
collation layout."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.training.engine import EngineConfig, deepspeed_config, lr_lambda  # noqa: E402
from medlvr.training.roi_targets import token_grid  # noqa: E402
from medlvr.training.model import set_pixel_budget  # noqa: E402
from medlvr.training.sft.collate import FULL_IMAGE, collate, roi_boxes  # noqa: E402
from medlvr.training.sft.config import load_sft_config as load_config  # noqa: E402
from medlvr.training.sft.data import DataPosition, ShardStream, shard_files  # noqa: E402
from medlvr.training.sft.losses import answer_nll_sum, latent_cosine_sum, roi_loss_rows, roi_loss_sum, sft_loss  # noqa: E402
from medlvr.corpus.qa.export import render_qwen  # noqa: E402
from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from tests.training.helpers import TINY_CONFIG  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.getbasetemp() / "sft_corpus")


# ------------------------------------------------------------------------------------------------ losses
def test_answer_nll_sum_hand():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, -4.0]])
    mask = torch.tensor([[True, False, True], [True, False, False]])
    assert answer_nll_sum(lp, mask).item() == pytest.approx(1 + 3 + 0.5)


def test_roi_loss_mse_and_cosine_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # N=1, K=2, D=2
    z = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    # mse: ((1 + 0) / 2 + (0 + 1) / 2) / 2 = 0.5
    assert roi_loss_rows(h, z, "mse").tolist() == pytest.approx([0.5])
    # cosine: k=1 target zero vector -> cos 0 (eps-guarded) -> 1; k=2 parallel -> 0; mean 0.5
    assert roi_loss_rows(h, z, "cosine").tolist() == pytest.approx([0.5])
    h2 = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    z2 = torch.tensor([[[0.0, 1.0]], [[-1.0, -1.0]]])
    assert roi_loss_rows(h2, z2, "cosine").tolist() == pytest.approx([1.0, 2.0])
    assert roi_loss_sum(h2, z2, torch.tensor([True, False]), "cosine").item() == pytest.approx(1.0)
    assert latent_cosine_sum(h2, z2, torch.tensor([True, True])).item() == pytest.approx(0 - 1)
    with pytest.raises(ValueError):
        roi_loss_rows(h, z, "l1")


def test_roi_loss_has_no_gradient_into_targets():
    h = torch.randn(2, 3, 4, requires_grad=True)
    z = torch.randn(2, 3, 4, requires_grad=True)
    roi_loss_sum(h, z, torch.tensor([True, True])).backward()
    assert h.grad is not None and z.grad is None


def test_sft_loss_separate_normalisers():
    nll, roi = torch.tensor(6.0), torch.tensor(2.0)
    assert sft_loss(nll, 3, roi, 4, 0.1).item() == pytest.approx(6 / 3 + 0.1 * 2 / 4)
    assert sft_loss(nll, 3, roi, 0, 0.1).item() == pytest.approx(2.0)  # no ROI rows: no ROI term
    assert sft_loss(nll, 3, roi, 4, 0.0).item() == pytest.approx(2.0)
    assert sft_loss(nll, 0, roi, 4, 1.0).item() == pytest.approx(0.5)


def test_lr_schedule_hand():
    assert [lr_lambda(s, 2, 10) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_lambda(6, 2, 10) == pytest.approx(0.5)  # half way through the decay
    assert lr_lambda(10, 2, 10) == pytest.approx(0.0)
    assert lr_lambda(10, 2, 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_lambda(7, 2, 10, schedule="constant") == 1.0


# --------------------------------------------------------------------------------------------- ROI boxes
B0, B1, B2 = [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 10.0, 10.0]


@pytest.mark.parametrize("row,expected", [
    ({"answer_is_box": True, "boxes": [B0, B1]}, [B0, B1]),  # grounding: all answer boxes
    ({"answer_is_box": False, "boxes": [B0, B1, B2], "options": ["{box0}", "{box1}", "{box2}"], "answer_index": 1},
     [B1]),  # grounding_choice: only the correct option's box, not the distractors
    ({"answer_is_box": False, "boxes": [B0], "options": ["liver", "lung"], "answer_index": 0}, [B0]),
    ({"answer_is_box": False, "boxes": [B0, B2], "options": None}, [B0, B2]),  # counting: all instances
    ({"answer_is_box": False, "boxes": None}, None),  # presence: no ROI loss by default
])
def test_roi_box_rules(row, expected):
    assert roi_boxes(row) == expected


def test_roi_box_variants():
    row = {"answer_is_box": True, "boxes": [B0]}
    assert roi_boxes({"boxes": None, "answer_is_box": False}, no_box="full_image") == FULL_IMAGE
    assert roi_boxes(row, roi_target="full_image") == FULL_IMAGE
    assert roi_boxes(row, roi_target="off") is None


# ------------------------------------------------------------------------------------------------ config
def test_config_loading_and_validation(tmp_path):
    cfg = load_config(TINY_CONFIG, ["data.corpus=/x", "engine.lr=2e-4", "data.question_types=[grounding]"])
    assert cfg.engine.lr == 2e-4 and cfg.data.question_types == ("grounding",) and cfg.latent.k_latent == 4
    with pytest.raises(ValueError, match="unknown config key latent.kk"):
        load_config(TINY_CONFIG, ["data.corpus=/x", "latent.kk=3"])
    with pytest.raises(ValueError, match="bptt"):
        load_config(TINY_CONFIG, ["data.corpus=/x", "engine.gradient_checkpointing=true"])
    assert load_config(TINY_CONFIG, ["data.corpus=/x", "engine.gradient_checkpointing=true",
                                     "latent.grad=detach"]).engine.gradient_checkpointing
    with pytest.raises(ValueError, match="corpus"):
        load_config(TINY_CONFIG)
    big = load_config(TINY_CONFIG.parent / "sft_qwen25vl_7b.yaml")
    assert big.engine.backend == "deepspeed" and big.latent.k_latent == 8 and big.engine.precision == "bf16"


def test_deepspeed_config_generated():
    ds = deepspeed_config(EngineConfig(backend="deepspeed", grad_accum=2, precision="bf16", max_grad_norm=1.0), 4, 6)
    assert ds["train_batch_size"] == 48 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and ds["gradient_clipping"] == 1.0
    assert "optimizer" not in ds  # torch AdamW from the client: no JIT-built DeepSpeed optimizer
    off = deepspeed_config(EngineConfig(backend="deepspeed", offload_optimizer=True), 1, 1)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and off["optimizer"]["type"] == "AdamW"


# ------------------------------------------------------------------------------------------------ stream
def _ids(rows):
    return [r["qa_id"] for r in rows]


def test_stream_deterministic_resumable_and_sharded(corpus):
    files = shard_files(corpus, "train")
    a = ShardStream(files, seed=3)
    n = a.rows_per_epoch
    first = [_ids(a.next_rows(4)) for _ in range(n // 4 + 3)]  # crosses into epoch 1
    assert a.position.epoch == 1
    epoch0 = [i for b in first for i in b][:n]
    assert sorted(epoch0) == sorted(set(epoch0)) and len(epoch0) == n  # each row once per epoch
    b = ShardStream(files, seed=3)
    assert [_ids(b.next_rows(4)) for _ in range(3)] == first[:3]
    resumed = ShardStream(files, seed=3, position=DataPosition(**b.position.to_dict()))
    assert [_ids(resumed.next_rows(4)) for _ in range(len(first) - 3)] == first[3:]
    assert _ids(ShardStream(files, seed=4).next_rows(8)) != [i for blk in first[:2] for i in blk]
    r0, r1 = (ShardStream(files, seed=3, rank=r, world=2) for r in (0, 1))
    assert _ids(r0.next_rows(2)) + _ids(r1.next_rows(2)) == first[0]  # ranks split the global micro-batch
    assert r0.position == r1.position == DataPosition(0, 4)
    only = ShardStream(files, seed=3, question_types=["grounding"])
    assert {r["question_type"] for r in only.next_rows(3)} == {"grounding"}


# --------------------------------------------------------------------------------------------- collation
def test_collate_layout_labels_and_budget(any_tokenizer_bundle, corpus):
    """With the tiny BPE and with the real Qwen2.5 tokenizer (ids 151665-151667 for the control tokens)."""
    tiny = any_tokenizer_bundle
    rows = ShardStream(shard_files(corpus, "train"), shuffle=False).next_rows(6)
    proc, ids, K = tiny.processor, tiny.ids, 3
    b = collate(rows, proc, ids, K, min_pixels=56 * 56, max_pixels=28 * 28 * 16)
    L = b.prompts["input_ids"].shape[1]
    seq, lab = b.sequences, b.label_mask
    assert (seq[:, 0] == ids.start).all() and (seq[:, 1:K + 1] == ids.latent).all() and (seq[:, K + 1] == ids.end).all()
    assert lab[:, 0].all() and not lab[:, 1:K + 2].any()  # Start labelled; latents and forced End never
    eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i in range(len(rows)):
        n = int(b.gen_mask[i].sum())
        assert seq[i, n - 1] == eos and lab[i, K + 2:n].all() and not lab[i, n:].any()
        assert b.prompts["attention_mask"][i, -1] == 1  # prompts left-padded: Start at column L for every row
        # the labels select exactly <Medlvr_Start>, the answer's own token ids and <|im_end|>
        answer = render_qwen(rows[i], 56 * 56, 28 * 28 * 16)[1]
        answer_ids = proc.tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert seq[i][lab[i]].tolist() == [ids.start] + answer_ids + [eos]
    ip = proc.image_processor
    for thw, (h, w) in zip(b.prompts["image_grid_thw"], b.image_sizes):
        g = token_grid(ip, h, w)
        assert (int(thw[1]) // 2, int(thw[2]) // 2) == (g.grid_h, g.grid_w) and g.grid_h * g.grid_w <= 16
    assert L > 0 and b.n_label == int(lab.sum())
    v = collate(rows, proc, ids, 0, min_pixels=56 * 56, max_pixels=28 * 28 * 16)
    assert v.label_mask.sum() == v.gen_mask.sum() and not (v.sequences == ids.start).any() and v.n_roi == 0
    set_pixel_budget(proc, tiny_default := 56 * 56, 28 * 28 * 1280)  # leave the shared processor as it was
    assert ip.size["shortest_edge"] == tiny_default


def test_cli_config_error_is_one_line_and_exit_2(capsys):
    from medlvr.pipelines.cli import main

    for cmd in ("train-sft", "train-vlpo"):
        config = TINY_CONFIG if cmd == "train-sft" else TINY_CONFIG.parent / "vlpo_tiny.yaml"
        assert main([cmd, "--config", str(config), "--set", "engine.lrr=1"]) == 2
        assert capsys.readouterr().err == "medlvr: error: unknown config key engine.lrr (did you mean engine.lr?)\n"


def test_old_val_split_is_a_one_line_renamed_error():
    """The corpus' validation split is `validation` (Hugging Face's name): an old `data.split: val` says so, through
    the console script as the README prints it, in one line with exit status 2."""
    import subprocess
    import sys
    from pathlib import Path

    medlvr = str(Path(sys.executable).with_name("medlvr"))
    r = subprocess.run([medlvr, "train-sft", "--config", str(TINY_CONFIG), "--set", "data.corpus=/x",
                        "--set", "data.split=val"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "renamed to 'validation'" in r.stderr and "data.split=validation" in r.stderr
    assert load_config(TINY_CONFIG, ["data.corpus=/x", "data.split=validation"]).data.split == "validation"


def test_old_schema_shards_are_refused_in_one_line(tmp_path):
    """Shards written before the Hugging Face renames (`image_png`, `val`) say to rebuild instead of a KeyError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "shards" / "train"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"qa_id": ["a"], "image_png": [b"png"], "split": ["train"]}), d / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"older schema .* rebuild the corpus with `medlvr build-corpus`") as e:
        shard_files(tmp_path, "train")
    assert "\n" not in str(e.value)
