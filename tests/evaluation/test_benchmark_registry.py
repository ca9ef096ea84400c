"""The benchmark registry: the six paper benchmarks register the facts evaluation used to hard-code, and a new
benchmark (a loader and a sample writer registered in this test, no other file edited) runs through evaluation's
loading path."""

import json
from pathlib import Path

import pytest

from medlvr.corpus.evalsets import registry
from medlvr.corpus.evalsets.base import BenchmarkError, Sample, file_uri
from medlvr.corpus.evalsets.registry import all_benchmarks, register_benchmark, write_benchmark_samples


def test_paper_benchmarks_register_what_evaluation_used_to_hard_code():
    from medlvr.evaluation import config

    # the six paper benchmarks, then the main job's synthetic grounding task (last, in-domain)
    assert config.BENCHMARKS == ("omnimedvqa", "slake", "vqa_rad", "pmc_vqa", "mmmu_hm", "medxpertqa_mm",
                                 "synthetic_grounding")
    assert config.EXTERNAL == ("slake", "vqa_rad", "pmc_vqa", "mmmu_hm", "medxpertqa_mm")
    assert config.EFFICIENCY_QUOTAS == {"slake": 100, "vqa_rad": 100, "pmc_vqa": 100, "mmmu_hm": 100,
                                        "medxpertqa_mm": 85}
    assert sum(config.EFFICIENCY_QUOTAS.values()) == 485
    assert config.EFFICIENCY_KINDS == {"slake": "yesno", "vqa_rad": "yesno", "mmmu_hm": "mc"}
    assert {b: d for b, d in config.DATA_DIRS.items() if b != d} == {"mmmu_hm": "mmmu", "medxpertqa_mm": "medxpertqa"}
    assert list(registry.sample_writers()) == ["omnimedvqa", "slake", "vqa_rad", "vqa_rad_osf", "pmc_vqa", "mmmu",
                                               "medxpertqa", "synthetic_grounding"]


def test_partitions_and_sample_evaluation_follow_the_registry():
    from medlvr.pipelines.evaluation.assets import BENCHMARK_PARTITIONS, SAMPLE_CONFIG

    assert BENCHMARK_PARTITIONS.get_partition_keys() == list(all_benchmarks())
    from medlvr.evaluation.config import load_eval_config

    sample = load_eval_config(SAMPLE_CONFIG)  # its benchmarks section is left out: every registered benchmark
    assert list(sample.benchmarks) == list(sample.main_benchmarks) == list(all_benchmarks())


def test_a_benchmark_name_selects_its_data_dir_writer(tmp_path):
    counts = write_benchmark_samples(tmp_path, ["mmmu_hm"])
    assert counts == {"mmmu": 6} and (tmp_path / "mmmu").is_dir() and not (tmp_path / "mmmu_hm").exists()
    with pytest.raises(BenchmarkError, match="no benchmark sample writer"):
        write_benchmark_samples(tmp_path, ["nonexistent"])


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, in a copy this test may add to."""
    monkeypatch.setattr(registry, "BENCHMARK_REGISTRY", dict(all_benchmarks()))


def test_register_rejects_duplicates_and_a_data_dir_without_writer(scratch_registry):
    with pytest.raises(ValueError, match="registered twice"):
        register_benchmark("slake", lambda root: iter(()))
    with pytest.raises(ValueError, match="no sample writer for its data_dir"):
        register_benchmark("toy", lambda root: iter(()), data_dir="toy_v2", sample_writers={"toy": lambda root: 0})
    with pytest.raises(ValueError, match="efficiency_kind"):
        register_benchmark("toy", lambda root: iter(()), efficiency_kind="essay")
    with pytest.raises(BenchmarkError, match="no benchmark registered as 'toy'"):
        registry.get_benchmark("toy")


def test_a_new_benchmark_is_one_registration(scratch_registry, tmp_path):
    """Loader + sample writer registered here; evaluation writes the sample files, loads and scores them."""
    from medlvr.corpus.config import build_config
    from medlvr.evaluation.config import EvalConfig
    from medlvr.evaluation.runs import load_all
    from medlvr.evaluation.scoring import make_record, score_file, write_records

    def write_toy(root: Path) -> int:
        from PIL import Image

        Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "red.png")
        rows = [{"id": 1, "q": "Is the image red?", "a": "yes"}, {"id": 2, "q": "Is the image blue?", "a": "no"}]
        (root / "toy.json").write_text(json.dumps(rows))
        return len(rows)

    def load_toy(root: Path, split: str = "test"):
        for r in json.loads((Path(root) / "toy.json").read_text()):
            yield Sample("toy", f"{split}-{r['id']}", r["q"], "yesno", r["a"], images=(file_uri(root / "red.png"),))

    register_benchmark("toy", load_toy, data_dir="toy_qa", sample_writers={"toy_qa": write_toy}, rank=50)
    assert list(all_benchmarks()).index("toy") == 6  # after the six paper benchmarks (ranks 0-5)

    bench = tmp_path / "bench"
    cfg = build_config(EvalConfig, {"out_dir": str(tmp_path / "out"), "data_root": str(bench), "sample_data": True,
                                    "benchmarks": {"toy": {"path": str(bench / "toy_qa")}},
                                    "models": [{"name": "base", "path": "tiny", "tiny_seed": 0, "k_latent": 0}]})
    samples = load_all(cfg)["toy"]
    assert [s.sample_id for s in samples] == ["test-1", "test-2"]
    assert (tmp_path / "bench" / "toy_qa" / "red.png").is_file()
    write_records(tmp_path / "p.jsonl", [make_record(s, f"<answer>{s.answer}</answer>", n_tokens=3, model="gold",
                                                     k_latent=0) for s in samples])
    scored = score_file(tmp_path / "p.jsonl")
    assert [r["correct"] for r in scored] == [True, True]


def test_table2_follows_the_registrys_external_flag(scratch_registry):
    """Table 2's columns are the registered external benchmarks with their subsets: a new external benchmark is a new
    column scored on its subset, an in-domain one (external=False) is none, and an unknown subset is refused."""
    from medlvr.evaluation.scoring import score_records, table2, table2_subsets

    assert table2_subsets() == {"slake": "closed", "vqa_rad": "closed", "pmc_vqa": "all", "mmmu_hm": "mc",
                                "medxpertqa_mm": "all"}  # the paper's Table 2
    register_benchmark("toy_ext", lambda root: iter(()), rank=50, table2_subset="yesno")
    register_benchmark("toy_in", lambda root: iter(()), rank=51, external=False)
    assert list(table2_subsets())[-1] == "toy_ext" and "toy_in" not in table2_subsets()
    recs = [{"benchmark": "toy_ext", "sample_id": str(i), "output": f"<answer>{a}</answer>", "kind": kind,
             "answer": "yes", "options": [], "tags": {}} for i, (kind, a) in enumerate(
                 [("yesno", "yes"), ("yesno", "no"), ("open", "yes")])]
    row = table2(score_records(recs))["benchmarks"]["toy_ext"]
    assert row["n"] == 2 and row["accuracy"] == 0.5 and row["subset"] == "yesno"  # the open item is not scored
    with pytest.raises(ValueError, match="table2_subset must be one of"):
        register_benchmark("toy_bad", lambda root: iter(()), table2_subset="closd")
