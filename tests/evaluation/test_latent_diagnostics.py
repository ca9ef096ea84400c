"""Causal latent diagnostics (evaluation/latent_diagnostics.py): donor-following arithmetic, the linear probe,
the donor swap feeding the donor's own latents, and `medlvr evaluate` with `latent_diagnostics:` and
`--set decode.closed=true` end to end (report's latent section, records, JSON)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.evaluation.config import ConfigError, load_eval_config  # noqa: E402
from medlvr.evaluation.inference import encode_batch, load_for_eval  # noqa: E402
from medlvr.evaluation.latent_diagnostics import (  # noqa: E402
    ZERO_SHUFFLE_NOTE, SampleDecoder, SwapLatents, diagnose, donor_following, heldout_split, linear_probe)
from medlvr.evaluation.runs import load_all  # noqa: E402
from medlvr.training.model import eos_token_ids  # noqa: E402
from tests.evaluation.test_cli import _write as write_config  # noqa: E402

CONFIG = {
    "out_dir": "out", "data_root": "bench", "sample_data": True, "limit": 4,
    "benchmarks": {"slake": {}},
    "models": [{"name": "base", "path": "tiny", "k_latent": 0, "prompt_style": "direct"},
               {"name": "medlvr", "path": "tiny", "tiny_seed": 1, "k_latent": 2}],
    "decode": {"batch_size": 2, "max_new_tokens": 6, "max_pixels": 12544, "threads": 1},
    "latent_diagnostics": {"k_values": [1, 2, 3], "probe_fraction": 0.5},
}


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(tmp_path, cfg=CONFIG):
    return write_config(tmp_path, cfg)


def test_donor_following_counts_only_rows_whose_answers_differ():
    own = ["A", "B", "A", "C", None]  # batches [0, 1, 2] and [3, 4]: donors 1, 2, 0 and 4, 3
    swapped = ["B", "B", "A", "C", "C"]
    r = donor_following(own, swapped, [3, 2])
    # row 0: donor B, now B (follows); row 1: donor A, kept B; row 2: donor A == own (not eligible);
    # row 3: donor None (not eligible); row 4: own None (not eligible)
    assert r == {"donor_following": 50.0, "kept_own": 50.0, "n_eligible": 2}


def test_linear_probe_reads_the_answer_only_when_it_is_there():
    g = torch.Generator().manual_seed(0)
    labels = [("A", "B", "C", "D")[i % 4] for i in range(200)]
    onehot = torch.nn.functional.one_hot(torch.tensor([i % 4 for i in range(200)]), 4).float()
    informative = torch.cat([onehot + 0.1 * torch.randn(200, 4, generator=g), torch.randn(200, 3, 16, generator=g)
                             .reshape(200, -1)], 1)
    test = heldout_split([f"s{i}" for i in range(200)], 0.5, seed=0)
    assert 60 < sum(test) < 140 and test == heldout_split([f"s{i}" for i in range(200)], 0.5, seed=0)
    assert linear_probe(informative, labels, test)["probe_accuracy"] > 95
    noise = linear_probe(torch.randn(200, 8, generator=g), labels, test)
    assert noise["probe_accuracy"] < 50 and noise["probe_majority"] < 40


def test_swap_feeds_each_row_its_donors_latents(tmp_path):
    cfg = load_eval_config(_write(tmp_path))
    samples = load_all(cfg)["slake"]
    lm = load_for_eval(cfg.model("medlvr"), cfg.decode)
    dec = SampleDecoder(lm.model, lm.processor, lm.ids, samples, lambda p, b: encode_batch(p, b, "tags")[0],
                        batch_size=2, max_new_tokens=lambda k: 6, eos_ids=eos_token_ids(lm.model))
    opened = dec.run(2)
    swapped = dec.run(2, transform=lambda bi: SwapLatents(opened.z[2 * bi:2 * bi + 2]))
    for bi in range(len(dec.batches)):  # row 0 gets row 1's latents and row 1 row 0's
        torch.testing.assert_close(swapped.z[2 * bi:2 * bi + 2], opened.z[2 * bi:2 * bi + 2].flip(0))
    res = diagnose(dec, 2, [1, 3])
    assert set(res["k_sweep"]) == {"1", "2", "3"} and res["n"] == len(samples)
    assert res["k_sweep"]["2"]["accuracy"] == res["accuracy_open"]
    assert res["drop_zero"] == res["accuracy_open"] - res["accuracy_zero"]
    with pytest.raises(ValueError, match="K >= 1"):
        diagnose(dec, 0)


def test_evaluate_with_latent_section_and_closed_inference(tmp_path):
    from medlvr.pipelines.cli import main

    assert main(["evaluate", "--config", str(_write(tmp_path)), "--set", "decode.closed=true", "--quiet"]) == 0
    out = tmp_path / "out"
    md = (out / "report.md").read_text()
    assert "Latent diagnostics" in md and ZERO_SHUFFLE_NOTE in md and "closed inference" in md
    diag = json.loads((out / "latent_diagnostics.json").read_text())
    assert list(diag) == ["medlvr"]  # every latent model, not the K = 0 base
    r = diag["medlvr"]["slake"]
    for key in ("accuracy_open", "accuracy_closed", "donor_following", "accuracy_zero", "probe_accuracy", "k_sweep"):
        assert key in r
    recs = {m: [json.loads(x) for x in (out / f"predictions/{m}/k{k}/main/slake.jsonl").open()]
            for m, k in (("medlvr", 2), ("base", 0))}
    assert {x["closed"] for x in recs["medlvr"]} == {True} and {x["closed"] for x in recs["base"]} == {False}


def test_config_errors(tmp_path):
    for bad, msg in [({"latent_diagnostics": {"bogus": 1}}, "unknown config key latent_diagnostics.bogus"),
                     ({"latent_diagnostics": {"models": ["nope"]}}, "unknown model"),
                     ({"latent_diagnostics": {"benchmarks": ["vqa_rad"]}}, "not configured")]:
        with pytest.raises(ConfigError, match=msg):
            load_eval_config(_write(tmp_path, {**CONFIG, **bad}))


def test_diagnostics_sharded_over_two_ranks_then_merged_equal_one_process(tmp_path):
    """Issue 28: what each torchrun rank of `medlvr evaluate` does (its whole batches r::2 of every pass, a rank
    file each), then rank 0's merge: the same latent_diagnostics.json as one process (read back as plain JSON) and,
    row by row, the same decoded passes (the tiny model answers nothing parseable, so the JSON's figures alone
    could not tell rows apart). 5 samples in batches of 2: rank 0 decodes batches 0 and 2 (the short one), rank 1
    batch 1."""
    from medlvr.evaluation.latent_diagnostics import (RecordingDecoder, merge_rank_diagnostics, merged_passes,
                                                      rank_diagnostics_path, run_for_config)

    path = _write(tmp_path, {**CONFIG, "limit": 5})
    one = load_eval_config(path, ["out_dir=one"])
    samples = load_all(one)
    chosen = sorted(samples["slake"], key=lambda s: s.sample_id)
    assert len(chosen) == 5
    run_for_config(one, samples)
    two = load_eval_config(path, ["out_dir=two"])
    for rank in (0, 1):
        assert run_for_config(two, samples, rank=rank, world_size=2) == {}
    files = [rank_diagnostics_path(two.out_dir, r, 2, "medlvr", "slake") for r in (0, 1)]
    assert [torch.load(f, weights_only=True)[0]["mu"].shape[0] for f in files] == [3, 2]
    assert not (two.out_dir / "latent_diagnostics.json").exists()
    merged = merged_passes(two.out_dir, 2, "medlvr", "slake", [2, 2, 1])
    lm = load_for_eval(one.model("medlvr"), one.decode)
    rec = RecordingDecoder(SampleDecoder(lm.model, lm.processor, lm.ids, chosen,
                                         lambda p, b: encode_batch(p, b, "tags")[0], batch_size=2,
                                         max_new_tokens=lambda k: 6, eos_ids=eos_token_ids(lm.model)))
    diagnose(rec, 2, [1, 2, 3])
    assert len(merged) == len(rec.passes) >= 6
    for m, s in zip(merged, rec.passes):
        assert torch.equal(m.mu, s.mu) and torch.equal(m.z, s.z) and m.parsed == s.parsed
    assert not torch.equal(merged[0].mu[:2], merged[0].mu[2:4])  # rows differ: a wrong interleave would show
    merge_rank_diagnostics(two, samples, 2)
    single = json.loads((one.out_dir / "latent_diagnostics.json").read_text())
    assert json.loads((two.out_dir / "latent_diagnostics.json").read_text()) == single
    assert single["medlvr"]["slake"]["n"] == 5 and set(single["medlvr"]["slake"]["k_sweep"]) == {"1", "2", "3"}
    assert not list(two.out_dir.glob("latent_diagnostics.rank*"))
