"""Blocking checks on `qa_pairs` (one dataset partition each): what a trainer silently mislearns from if it is
wrong. The schema of the pairs file, the gold answer among the options, every box inside its image."""


import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from medlvr.corpus import layout
from medlvr.corpus.shards import QA_SCHEMA
from medlvr.pipelines.corpus.checks import _result
from medlvr.pipelines.corpus.partitions import DATASET_PARTITIONS
from medlvr.pipelines.corpus.resources import CorpusStorage

# columns the shard writer adds when it publishes a pair (split, patient, duplicate group, the image itself)
SHARD_ONLY_COLUMNS = ("split", "patient_key", "dup_group", "width", "height", "image")
PAIRS_SCHEMA = pa.schema([f for f in QA_SCHEMA if f.name not in SHARD_ONLY_COLUMNS])


def schema_problems(table: pa.Table) -> list[dict]:
    """Missing or mistyped columns against PAIRS_SCHEMA, and nulls in its required columns."""
    problems = []
    for f in PAIRS_SCHEMA:
        if f.name not in table.column_names:
            problems.append({"column": f.name, "problem": f"missing (expected {f.type})"})
        elif not table.schema.field(f.name).type.equals(f.type):
            problems.append({"column": f.name, "problem": f"type {table.schema.field(f.name).type}, expected {f.type}"})
        elif not f.nullable and table.column(f.name).null_count:
            problems.append({"column": f.name, "problem": f"{table.column(f.name).null_count} nulls"})
    return problems


def answer_problems(rows: list[dict]) -> list[dict]:
    """Multiple-choice pairs whose gold answer is not the option at answer_index (or the index is out of range)."""
    bad = []
    for r in rows:
        opts, i = r["options"], r["answer_index"]
        if opts is None and i is None:
            continue  # an open question
        if opts is None or i is None or not 0 <= i < len(opts) or opts[i] != r["answer"]:
            bad.append({"qa_id": r["qa_id"], "answer": r["answer"], "answer_index": i, "options": opts})
    return bad


def box_problems(rows: list[dict], sizes: dict[str, tuple[int, int]]) -> list[dict]:
    """Boxes outside their image (0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height), or of an unknown image."""
    bad = []
    for r in rows:
        w, h = sizes.get(r["image_id"], (0, 0))
        for b in r["boxes"] or []:
            if len(b) != 4 or not (0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h):
                bad.append({"qa_id": r["qa_id"], "box": b, "width": w, "height": h})
    return bad


@dg.asset_check(asset="qa_pairs", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="The pairs file has the shard schema's columns and types (less the columns publishing "
                            "adds) and no null in a required column.")
def qa_pairs_schema(context: dg.AssetCheckExecutionContext, storage: CorpusStorage) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.pairs(ds)]) as out:
        table = pq.read_table(out / layout.pairs(ds))
    return _result(schema_problems(table), len(PAIRS_SCHEMA), rows=table.num_rows)


@dg.asset_check(asset="qa_pairs", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="Every multiple-choice pair's answer is the option at its answer_index.")
def qa_answer_among_options(context: dg.AssetCheckExecutionContext, storage: CorpusStorage) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.pairs(ds)]) as out:
        rows = pq.read_table(out / layout.pairs(ds), columns=["qa_id", "answer", "options",
                                                              "answer_index"]).to_pylist()
    return _result(answer_problems(rows), len(rows))


@dg.asset_check(asset="qa_pairs", blocking=True, partitions_def=DATASET_PARTITIONS,
                description="Every box a pair names lies inside its normalised image.")
def qa_boxes_inside_images(context: dg.AssetCheckExecutionContext, storage: CorpusStorage) -> dg.AssetCheckResult:
    ds = context.partition_key
    with storage.workdir(pull_paths=[layout.pairs(ds), layout.images(ds)]) as out:
        rows = pq.read_table(out / layout.pairs(ds), columns=["qa_id", "image_id", "boxes"]).to_pylist()
        img = pq.read_table(out / layout.images(ds), columns=["image_id", "width", "height"])
    sizes = dict(zip(img["image_id"].to_pylist(), zip(img["width"].to_pylist(), img["height"].to_pylist())))
    return _result(box_problems(rows, sizes), len(rows))


QA_CHECKS = [qa_pairs_schema, qa_answer_among_options, qa_boxes_inside_images]
