"""Catalog entries go through the one config loader: an unknown top-level key (`atributes:`), an adapter option
the adapter does not declare (`image_extt`, also inside a volume variant) is one line with a did-you-mean, not a
silent default; through the console script, exit 2. The mistyped entries are the shipped YAML files with one key
renamed (read with PyYAML, edited as data)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medlvr.corpus.catalog import CATALOG_DIR, CatalogError, load_catalog
from tests.catalog_count import N_DATASETS

MEDLVR = Path(sys.executable).parent / "medlvr"


def _rename(node: dict, path: list, new: str) -> None:
    *parents, last = path
    for p in parents:
        node = node[p]
    node[new] = node.pop(last)


CASES = {
    "attributes at the top level": ("kits23", ["attributes"], "atributes",
                                    "unknown config key atributes (did you mean attributes?)"),
    "a top-level key": ("kits23", ["homepage"], "homepag", "unknown config key homepag (did you mean homepage?)"),
    "a voc option": ("bccd", ["options", "image_ext"], "image_extt",
                     "unknown config key options.image_extt (did you mean options.image_ext?)"),
    "a volume option": ("kits23", ["options", "axis_order"], "axis_ordr",
                        "unknown config key options.axis_ordr (did you mean options.axis_order?)"),
    "an option of a variant": ("camus", ["options", "variants", 0, "anchor_glob"], "anchor_glb",
                               "unknown config key options.variants[0].anchor_glb (did you mean "
                               "options.variants[0].anchor_glob?)"),
}


def _write(tmp_path: Path, dataset: str, path: list, new: str, new_id: str | None = None) -> Path:
    raw = yaml.safe_load((CATALOG_DIR / f"{dataset}.yaml").read_text())
    _rename(raw, path, new)
    if new_id:
        raw["id"] = new_id
    folder = tmp_path / "catalog"
    folder.mkdir(exist_ok=True)
    (folder / f"{new_id or dataset}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistyped_catalog_key_is_one_line(tmp_path, case):
    dataset, path, new, message = CASES[case]
    folder = _write(tmp_path, dataset, path, new)
    with pytest.raises(CatalogError) as e:
        load_catalog(str(folder))
    assert str(e.value) == f"{dataset}.yaml: {message}"


def test_every_shipped_entry_declares_only_known_options():
    assert len(load_catalog()) == N_DATASETS


def test_through_the_console_script(tmp_path):
    folder = _write(tmp_path, "bccd", ["options", "image_ext"], "image_extt", new_id="bccd_site")
    env = {**os.environ, "MEDLVR_CATALOG_PATH": str(folder)}
    p = subprocess.run([str(MEDLVR), "catalog"], env=env, capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.splitlines() == ["medlvr: error: bccd_site.yaml: unknown config key options.image_extt (did you "
                                     "mean options.image_ext?)"]
