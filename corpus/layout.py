"""The corpus folder's layout: every path a build step reads or writes, relative to the corpus folder `out`.

One place for the names, so that the build (`medlvr.corpus.build`), the Dagster assets and checks, and the
remote-storage pull/push lists all spell a path the same way. Paths are POSIX strings (they are also keys of a
remote store); join them to a local folder with `out / layout.X`.

    raw/<id>/inventory.json                      what the raw dataset folder holds (Dagster's raw_dataset)
    ingest/<id>/{images,rois,rejects}.parquet    normalised images and ROIs (+ summary.json)
    ingest/.patient_salt                         the salt of the patient-key hashes (kept with the corpus)
    kg/stats.json                                the knowledge graph's counts (Dagster's knowledge_graph)
    qa/<id>/pairs.parquet + stats.json           question-answer-box pairs
    work/datasets.json                           the datasets of this publish (and those not built)
    work/hashes.parquet, dup_groups.parquet, dedup.json
    work/contaminated.parquet, decontamination.json
    work/splits.parquet, splits.json
    shards/<split>/part-*.parquet + _manifest.json
    card/README.md + PNG plots
    previews/<id>/{images,qa_pairs}.png          thumbnails with boxes that Dagster's metadata links to
    build_report.json                            every step's report in one file
"""

from __future__ import annotations

INGEST = "ingest"
PATIENT_SALT = "ingest/.patient_salt"
QA = "qa"
KG_STATS = "kg/stats.json"
WORK = "work"
DATASETS = "work/datasets.json"
HASHES = "work/hashes.parquet"
DUP_GROUPS = "work/dup_groups.parquet"
DEDUP_REPORT = "work/dedup.json"
CONTAMINATED = "work/contaminated.parquet"
DECONTAM_REPORT = "work/decontamination.json"
SPLITS = "work/splits.parquet"
SPLITS_REPORT = "work/splits.json"
SHARDS = "shards"
CARD = "card"
CARD_README = "card/README.md"
BUILD_REPORT = "build_report.json"
PREVIEWS = "previews"

DATASET = "{dataset}"  # placeholder in per-dataset paths; `for_dataset` fills it


def _per_dataset(template: str):
    """A function dataset id -> the path; called without an id it gives the template (for the step table)."""
    def path(dataset: str = DATASET) -> str:
        return template.replace(DATASET, dataset)

    return path


raw = _per_dataset("raw/{dataset}")
inventory = _per_dataset("raw/{dataset}/inventory.json")
ingest = _per_dataset("ingest/{dataset}")
images = _per_dataset("ingest/{dataset}/images.parquet")
rois = _per_dataset("ingest/{dataset}/rois.parquet")
rejects = _per_dataset("ingest/{dataset}/rejects.parquet")
ingest_summary = _per_dataset("ingest/{dataset}/summary.json")
qa = _per_dataset("qa/{dataset}")
pairs = _per_dataset("qa/{dataset}/pairs.parquet")
qa_stats = _per_dataset("qa/{dataset}/stats.json")


def for_dataset(paths: tuple[str, ...], dataset: str | None) -> list[str]:
    """`paths` with the dataset placeholder filled (per-dataset steps); unchanged when `dataset` is None."""
    if dataset is None:
        if any(DATASET in p for p in paths):
            raise ValueError(f"{paths} are per-dataset paths: name the dataset")
        return list(paths)
    return [p.replace(DATASET, dataset) for p in paths]


def preview(dataset_id: str, name: str) -> str:
    """A thumbnail grid of one dataset's asset (`name`: images | qa_pairs), linked from the Dagster metadata."""
    return f"{PREVIEWS}/{dataset_id}/{name}.png"
