"""The shipped catalog's size, read independently of the code under test (the YAML files of corpus/catalog/ parsed
with PyYAML): tests and docs count datasets from here, so a 32nd catalog entry breaks no hard-coded 31."""

from __future__ import annotations

from pathlib import Path

import yaml

CATALOG_FILES = sorted((Path(__file__).resolve().parents[1] / "corpus" / "catalog").glob("*.yaml"))
N_DATASETS = len(CATALOG_FILES)
N_MODALITIES = len({yaml.safe_load(p.read_text())["modality"] for p in CATALOG_FILES})
