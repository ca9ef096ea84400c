"""`medlvr catalog check` through the console script: on the sample data (whose quirks it must name) and on a
broken copy (a layout that matches nothing, a stray file, an unknown label). It writes nothing."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medlvr.corpus.catalog import CATALOG_DIR
from medlvr.corpus.sample_data import write_samples

MEDLVR = Path(sys.executable).parent / "medlvr"  # the venv's console script, as installed
IDS = ["busi", "fastmri_plus", "kits23", "lidc_idri"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("check") / "data"
    write_samples(root, IDS, seed=0)
    return root


def medlvr(*args):
    p = subprocess.run([str(MEDLVR), *map(str, args)], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_check_names_the_sample_quirks_and_writes_nothing(samples):
    before = _tree(samples.parent)
    rc, out, err = medlvr("catalog", "check", "--data-root", samples, "--datasets", *IDS)
    assert _tree(samples.parent) == before  # read only
    lines = out.splitlines()
    # the fastMRI+ sample's deliberately unmapped label, counted, is a problem: exit 1 with one error line
    assert "! fastmri_plus: label 'Unlisted finding' on 1 object(s) is neither mapped nor ignored by the catalog" in lines
    assert rc == 1 and err.strip() == "medlvr: error: 1 dataset(s) would lose annotation objects: fastmri_plus"
    # independent counts: the knee table's data rows with a box (csv), split by the catalog file's label map (yaml)
    with open(samples / "fastmri_plus" / "Annotations" / "knee.csv", newline="") as f:
        boxed = [r for r in csv.DictReader(f) if r["x"]]
    entry = yaml.safe_load((CATALOG_DIR / "fastmri_plus.yaml").read_text())
    unmapped = sum(r["label"].strip() not in entry["labels"] for r in boxed)
    assert unmapped == 2  # the ignored 'Possible artifact' and the unknown 'Unlisted finding'
    assert (f"fastmri_plus: 3 record(s), {len(boxed)} annotation object(s): {len(boxed) - unmapped} written as "
            f"boxes, {unmapped} rejected, 0 lost") in lines
    assert "fastmri_plus: layout glob 'Annotations/knee.csv' matches 1 file(s)" in lines
    # the conflicting duplicate is not looked for (it needs the whole run): BUSI is ok
    assert "busi: ok" in lines and "lidc_idri: ok" in lines and "kits23: ok" in lines
    assert any(line.startswith("kits23: ") and "object(s) rejected: load: kidney cyst: slice N: component of N px "
               "below the minimum size N px" in line for line in lines)
    assert any(line.startswith("lidc_idri: ") and "fused with the read" in line for line in lines)


def test_check_on_a_broken_copy(samples, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(samples / "busi", root / "busi")
    shutil.copytree(samples / "kits23", root / "kits23")
    # BUSI as some mirrors ship it: the class folders renamed, so the layout glob matches nothing
    (root / "busi" / "Dataset_BUSI_with_GT").rename(root / "busi" / "BUSI")
    (root / "kits23" / "dataset" / "notes.txt").write_text("a file no glob takes")
    rc, out, err = medlvr("catalog", "check", "--data-root", root)
    lines = out.splitlines()
    assert rc == 1 and "busi" in err and "kits23" not in err
    assert any(line.startswith("! busi: layout glob ") and line.endswith("matches 0 file(s)") for line in lines)
    assert "kits23: 1 file(s) *.txt in dataset/ that no layout glob, catalog option or record takes, e.g. notes.txt" \
        in lines
    assert "busi: would lose objects" in lines and "kits23: ok" in lines
    assert str(tmp_path) not in out  # relative paths only


def test_check_of_an_absent_dataset_is_one_error_line(tmp_path):
    rc, out, err = medlvr("catalog", "check", "--data-root", tmp_path, "--datasets", "busi")
    assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1 and "busi" in err
