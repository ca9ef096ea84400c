"""Issue 15 (7): errors that name the thing. The real `medlvr` console script, run as a user types it: a benchmark
whose image is not an image, truncated or missing, or whose question file is malformed, ends with ONE stderr line
naming the benchmark, the file (relative to the benchmark root) and the record, exit 2, no traceback; a bug still
shows its traceback."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from medlvr.corpus.evalsets.base import BenchmarkError, Sample, file_uri, parquet_uri, zip_uri
from medlvr.corpus.evalsets.registry import get_benchmark, write_benchmark_samples
from medlvr.evaluation import runs
from medlvr.evaluation.inference import image_location, open_sample_image
from medlvr.pipelines.cli import main

MEDLVR = str(Path(sys.executable).parent / "medlvr")


def _setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """(config, image of the first record, that record's id) for an evaluation of the OmniMedVQA sample."""
    write_benchmark_samples(tmp_path / "bench", ["omnimedvqa"])
    root = tmp_path / "bench" / "omnimedvqa"
    first = sorted(get_benchmark("omnimedvqa").loader(root), key=lambda s: s.sample_id)[0]
    cfg = {"out_dir": str(tmp_path / "out"), "benchmarks": {"omnimedvqa": {"path": str(root)}}, "limit": 2,
           "models": [{"name": "base", "path": "tiny", "k_latent": 0, "prompt_style": "direct"}],
           "decode": {"batch_size": 1, "max_new_tokens": 2, "max_pixels": 12544, "threads": 1, "device": "cpu"}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, Path(first.images[0].removeprefix("file://")), first.sample_id


def _medlvr(*args: str, cwd: Path) -> tuple[int, list[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([MEDLVR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("damage,why", [
    ("not an image", "is not an image"),
    ("truncated", "is truncated, damaged or unreadable"),
])
def test_evaluate_a_broken_image_is_one_line_naming_file_and_record(tmp_path, damage, why):
    config, image, record = _setup(tmp_path)
    data = image.read_bytes()
    image.write_bytes(b"GIF89a? no, a text file\n" if damage == "not an image" else data[: len(data) // 2])
    rc, err = _medlvr("evaluate", "--config", str(config), "--quiet", cwd=tmp_path)
    rel = image.relative_to(tmp_path / "bench" / "omnimedvqa").as_posix()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"medlvr: error: benchmark omnimedvqa: record {record}: image {rel} {why}"), err
    assert "Traceback" not in "\n".join(err) and "BytesIO" not in err[0]


def test_evaluate_and_merge_benchmark_errors_are_one_line(tmp_path):
    config, image, _ = _setup(tmp_path)
    image.unlink()  # the loader's own message: which image, under which root
    rc, err = _medlvr("evaluate", "--config", str(config), "--quiet", cwd=tmp_path)
    rel = image.relative_to(tmp_path / "bench" / "omnimedvqa").as_posix()
    assert rc == 2 and len(err) == 1 and err[0].startswith("medlvr: error: OmniMedVQA: image ") and rel in err[0], err
    split = next((tmp_path / "bench" / "omnimedvqa" / "QA_information").rglob("*.json"))
    split.write_text(json.dumps({"not": "a list"}))
    rc, err = _medlvr("evaluate-merge", "--config", str(config), "--world-size", "2", cwd=tmp_path)
    assert rc == 2 and len(err) == 1 and err[0].startswith("medlvr: error: OmniMedVQA: "), err
    assert split.name in err[0] and "must hold a JSON list" in err[0], err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    config, _, _ = _setup(tmp_path)

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(runs, "evaluate", bug)
    with pytest.raises(ZeroDivisionError):
        main(["evaluate", "--config", str(config), "--quiet"])


def test_the_error_line_names_zip_members_and_parquet_cells(tmp_path):
    root = tmp_path / "bench"
    (root / "sub").mkdir(parents=True)
    with zipfile.ZipFile(root / "sub" / "images.zip", "w") as zf:
        zf.writestr("images/a.jpg", b"not a jpeg")
    sample = Sample(benchmark="medxpertqa_mm", sample_id="MM-7", question="?", kind="open", answer="x")
    member = zip_uri(root / "sub" / "images.zip", "images/a.jpg")
    assert image_location(member, root) == "sub/images.zip member images/a.jpg"
    assert image_location(parquet_uri(root / "t.parquet", 3, "image_1"), root) == "t.parquet row 3 column image_1"
    assert image_location(file_uri(tmp_path / "elsewhere.png"), root) == str(tmp_path / "elsewhere.png")
    with pytest.raises(BenchmarkError) as e:
        open_sample_image(sample, member, root)
    assert str(e.value) == "benchmark medxpertqa_mm: record MM-7: image sub/images.zip member images/a.jpg is not an image"
    with pytest.raises(BenchmarkError, match="image sub/images.zip member images/b.jpg is not in the archive$"):
        open_sample_image(sample, zip_uri(root / "sub" / "images.zip", "images/b.jpg"), root)
