"""Scoring protocols (issue 26 §4): `medlvr`, `medevalkit` (MedEvalKit's prompts, rule judges and splits) and
`paper`, as registered units selected by `protocol:` in the evaluation config and named in every table caption and
in results.json. The expected verdicts below are worked out by hand from MedEvalKit's rules (the module docstring of
medlvr.evaluation.medevalkit_rules states them); docs/benchmarks.md records the check against MedEvalKit's own code."""

import json

import pytest
import yaml

from medlvr.corpus.evalsets.base import Sample
from medlvr.evaluation import cli as evaluation_cli
from medlvr.evaluation.config import ConfigError, load_eval_config
from medlvr.evaluation.inference import prompt_text
from medlvr.evaluation.protocols import PROTOCOLS, get_protocol
from medlvr.evaluation.scoring import score_record

OPTS = (("A", "liver"), ("B", "kidney"), ("C", "spleen"), ("D", "lung"))
LATENT = "<Medlvr_Start><Medlvr_Latent><Medlvr_Latent><Medlvr_End>"


def sample(bench, kind, answer, options=(), **tags):
    return Sample(bench, "s1", "Is there a mass?", kind, answer, options=options, tags=tags)


# (sample, output, medevalkit verdict, medlvr verdict)
CASES = [
    # yes/no by substring: exactly one of "yes" / "no" and the gold inside
    (sample("vqa_rad", "yesno", "no"), "I do not know", True, False),  # "not" holds "no" there
    (sample("vqa_rad", "yesno", "yes"), "Yes, and no", False, True),  # MedLVR: the leading unhedged "yes"
    (sample("vqa_rad", "yesno", "yes"), LATENT + "Yes.", True, True),
    (sample("vqa_rad", "yesno", "no"), "\\boxed{no}", True, True),
    # SLAKE judges a capitalised gold "Yes" as a short answer (exact match), not as yes/no
    (sample("slake", "yesno", "yes", answer_raw="Yes", answer_type="closed"), "Yes, there is", False, True),
    (sample("slake", "yesno", "yes", answer_raw="Yes", answer_type="closed"), "yes.", True, True),
    (sample("slake", "yesno", "no", answer_raw="no", answer_type="closed"), "It is not", True, False),  # MedLVR:
    # whole words only, "not" is no answer
    # open answers: exact match after lower-casing (the dot stays)
    (sample("slake", "open", "Liver", answer_raw="Liver", answer_type="open"), "liver", True, True),
    (sample("slake", "open", "Liver", answer_raw="Liver", answer_type="open"), "liver.", False, True),
    (sample("vqa_rad", "open", "left lung"), "The answer is left lung", False, True),  # " left lung": a space left
    # multiple choice: letters, cues, and the similarity fallback MedLVR does not have
    (sample("omnimedvqa", "mc", "B", OPTS), "B", True, True),
    (sample("omnimedvqa", "mc", "C", OPTS), "The answer is C", True, True),
    (sample("omnimedvqa", "mc", "B", OPTS), "<answer>kidney</answer>", True, True),
    (sample("pmc_vqa", "mc", "D", OPTS), "lungs maybe", True, False),  # closest option text: "d. lung"
    (sample("pmc_vqa", "mc", "A", OPTS), "", True, False),  # nothing similar: option A
]


@pytest.mark.parametrize("s, output, mek, mine", CASES)
def test_medevalkit_and_medlvr_verdicts_by_hand(s, output, mek, mine):
    rec = {"benchmark": s.benchmark, "sample_id": s.sample_id, "output": output}
    assert score_record(rec, s, "medevalkit")["correct"] is mek
    assert score_record(rec, s, "medlvr")["correct"] is mine


def test_the_three_protocols_are_registered():
    assert set(PROTOCOLS) >= {"medlvr", "medevalkit", "paper"}
    with pytest.raises(ValueError, match="protocol must be one of medlvr, medevalkit, paper"):
        get_protocol("lmms")


def test_medevalkit_prompts():
    mc = Sample("omnimedvqa", "x", "Which organ?", "mc", "B", options=OPTS)
    assert prompt_text(mc, "medevalkit") == ("\nQuestion: Which organ?\nOptions: \nA. liver\nB. kidney\nC. spleen\n"
                                             "D. lung\nAnswer with the option's letter from the given choices directly.")
    yn = Sample("vqa_rad", "x", "Is it normal?", "yesno", "yes")
    assert prompt_text(yn, "medevalkit") == "Is it normal?\nPlease output 'yes' or 'no'(no extra output)."
    closed = Sample("slake", "x", "Which lung?", "open", "Left", tags={"answer_type": "closed"})
    assert prompt_text(closed, "medevalkit") == "Which lung?\nAnswer the question using a single word or phrase."
    opened = Sample("slake", "x", "What is shown?", "open", "Liver", tags={"answer_type": "open"})
    assert prompt_text(opened, "medevalkit") == "What is shown?\nPlease answer the question concisely."


def _write(tmp_path, **cfg):
    base = {"data_root": str(tmp_path / "bench"), "out_dir": str(tmp_path / "out"), "sample_data": True,
            "models": [{"name": "m", "path": "tiny", "k_latent": 2, "prompt_style": "tags"}]}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({**base, **cfg}))
    return path


def test_protocol_config_fixes_splits_and_prompts_and_says_what_is_missing(tmp_path):
    cfg = load_eval_config(_write(tmp_path, protocol="medevalkit", benchmarks={"omnimedvqa": {}, "slake": {}}))
    assert cfg.benchmarks["omnimedvqa"]["split"] == "all" and cfg.benchmarks["slake"]["lang"] == "all"
    assert cfg.models[0].prompt_style == "medevalkit"
    with pytest.raises(ConfigError, match="benchmarks.omnimedvqa.split: protocol medevalkit scores split 'all', "
                                          "not 'test'"):
        load_eval_config(_write(tmp_path, protocol="medevalkit", benchmarks={"omnimedvqa": {"split": "test"}}))
    with pytest.raises(ConfigError, match="benchmarks.omnimedvqa.splits_dir is required by protocol paper"):
        load_eval_config(_write(tmp_path, protocol="paper", benchmarks={"omnimedvqa": {}}))
    with pytest.raises(ConfigError, match="protocol must be one of"):
        load_eval_config(_write(tmp_path, protocol="vlmevalkit", benchmarks={"slake": {}}))


def test_a_report_names_its_protocol_in_every_caption_and_in_results_json(tmp_path, capsys):
    path = _write(tmp_path, protocol="paper", limit=3, benchmarks={"slake": {}, "vqa_rad": {}, "pmc_vqa": {}},
                  decode={"max_new_tokens": 8, "batch_size": 4})
    assert evaluation_cli.main(["evaluate", "--config", str(path), "--quiet"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["protocol"]["name"] == "paper" and "yes/no" in res["protocol"]["description"]
    assert res["tables"] and all(t["caption"].endswith("[protocol: paper]") for t in res["tables"])
    md = (tmp_path / "out" / "report.md").read_text()
    captions = [line for line in md.splitlines() if line.startswith("**")]
    assert captions and all("[protocol: paper]" in c for c in captions)
    # paper: SLAKE and VQA-RAD on their yes/no questions only, every other benchmark whole
    kinds = {}
    for p in (tmp_path / "out" / "predictions").rglob("*.jsonl"):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            kinds.setdefault(r["benchmark"], set())
    for rec in (tmp_path / "out" / "samples").rglob("*.jsonl"):
        for line in rec.read_text().splitlines():
            r = json.loads(line)
            kinds.setdefault(r["benchmark"], set()).add(r["kind"])
    assert kinds["slake"] == {"yesno"} and kinds["vqa_rad"] == {"yesno"} and kinds["pmc_vqa"] == {"mc"}


def test_another_protocol_in_the_same_out_dir_is_refused_not_mixed(tmp_path, capsys):
    """Predictions resume by sample id: without the prompt check a medevalkit run would score the medlvr
    predictions already in the folder (asked with other prompts) as its own."""
    first = _write(tmp_path, limit=1, benchmarks={"vqa_rad": {}}, decode={"max_new_tokens": 4})
    assert evaluation_cli.main(["evaluate", "--config", str(first), "--quiet"]) == 0
    second = _write(tmp_path, protocol="medevalkit", limit=1, benchmarks={"vqa_rad": {}},
                    decode={"max_new_tokens": 4})
    capsys.readouterr()
    assert evaluation_cli.main(["evaluate", "--config", str(second), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medlvr: error: vqa_rad.jsonl: sample ")
    assert "was answered with another prompt (another protocol or prompt_style)" in err
