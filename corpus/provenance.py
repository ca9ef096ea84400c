"""Whether a raw dataset folder is the bundled synthetic sample or real data.

The sample writers (`medlvr.corpus.sample_data.write_samples`, `medlvr sample-data`) drop a marker file into the
root of every dataset folder they write. The ingest step records what it found in the dataset's summary
(`synthetic_sample`), and the corpus card says which of its datasets are synthetic stand-ins and lists licences
only for the datasets that were really read. The marker travels with the folder (a copy, a `MEDLVR_ROOT_<ID>`
pointing at it, a data root holding both kinds), which a flag on the command line or a data-root-wide file would not.
The file name starts with a dot and ends in neither an image nor an annotation extension, so no adapter's layout
glob lists it.
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE_MARKER = ".medlvr-synthetic-sample"


def write_sample_marker(root: Path, dataset: str, seed: int) -> Path:
    """Mark `root` (one dataset's folder) as written by the sample writer of `dataset` with `seed`."""
    path = Path(root) / SAMPLE_MARKER
    path.write_text(json.dumps({"dataset": dataset, "seed": seed, "synthetic": True,
                                "written_by": "medlvr.corpus.sample_data"}) + "\n")
    return path


def is_synthetic_sample(root: Path) -> bool:
    """True when `root` holds a dataset the sample writer wrote (its marker file is there)."""
    return (Path(root) / SAMPLE_MARKER).is_file()
