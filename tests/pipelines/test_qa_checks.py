"""The qa_pairs checks: each catches its own kind of damage, and they run (and pass) with a real dataset's job."""

import dagster as dg
import pyarrow as pa
import pytest

from medlvr.pipelines.corpus.assets import CORPUS_ASSETS
from medlvr.pipelines.corpus.checks import CORPUS_CHECKS
from medlvr.pipelines.corpus.qa_checks import (
    PAIRS_SCHEMA,
    QA_CHECKS,
    answer_problems,
    box_problems,
    schema_problems,
)
from medlvr.pipelines.corpus.resources import DatasetRoots, default_resources
from tests.pipelines.helpers import DATASET_ASSETS, check_evaluations


def _row(**kw) -> dict:
    r = {"qa_id": "q1", "image_id": "i1", "dataset": "busi", "modality": "ultrasound", "question_type": "size",
         "question": "Which is larger?", "answer": "kidney", "options": ["liver", "kidney", "spleen", "lung"],
         "answer_index": 1, "boxes": [[1.0, 2.0, 10.0, 12.0]], "answer_is_box": False, "concept_ids": [],
         "knowledge_only": False, "caption": None, "text_source": "template"}
    return {**r, **kw}


def test_schema_problems():
    good = pa.Table.from_pylist([_row()], schema=PAIRS_SCHEMA)
    assert schema_problems(good) == []
    assert [p["column"] for p in schema_problems(good.drop_columns(["answer_index"]))] == ["answer_index"]
    retyped = good.set_column(good.schema.get_field_index("answer_index"), "answer_index",
                              pa.array(["1"], pa.string()))
    assert "type string" in schema_problems(retyped)[0]["problem"]
    nulls = good.set_column(good.schema.get_field_index("answer"), pa.field("answer", pa.string()),
                            pa.array([None], pa.string()))
    assert schema_problems(nulls) == [{"column": "answer", "problem": "1 nulls"}]


def test_answer_problems():
    assert answer_problems([_row(), _row(options=None, answer_index=None)]) == []  # mc, and an open question
    bad = [_row(qa_id="a", answer_index=2), _row(qa_id="b", answer_index=7), _row(qa_id="c", answer_index=None),
           _row(qa_id="d", options=None)]
    assert [p["qa_id"] for p in answer_problems(bad)] == ["a", "b", "c", "d"]


def test_box_problems():
    sizes = {"i1": (20, 20)}
    assert box_problems([_row(), _row(boxes=None)], sizes) == []
    bad = [_row(qa_id="a", boxes=[[1.0, 2.0, 21.0, 12.0]]), _row(qa_id="b", boxes=[[5.0, 2.0, 5.0, 12.0]]),
           _row(qa_id="c", image_id="gone"), _row(qa_id="d", boxes=[[-1.0, 0.0, 3.0, 3.0]])]
    assert [p["qa_id"] for p in box_problems(bad, sizes)] == ["a", "b", "c", "d"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLVR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDLVR_DATA_ROOT", raising=False)
    return tmp_path / "home"


def test_checks_run_with_the_dataset_job_and_pass_on_real_pairs(home):
    instance = dg.DagsterInstance.ephemeral()
    resources = {**default_resources(), "dataset_roots": DatasetRoots(datasets=["busi"])}
    everything = [*CORPUS_ASSETS, *CORPUS_CHECKS, *QA_CHECKS]
    dg.materialize(everything, selection=dg.AssetSelection.assets("knowledge_graph"), resources=resources,
                   instance=instance)
    first = dg.materialize(everything, selection=DATASET_ASSETS, partition_key="busi", resources=resources,
                           instance=instance)
    evals = {e.check_name: e for e in check_evaluations([first])}
    assert {"qa_pairs_schema", "qa_answer_among_options", "qa_boxes_inside_images"} <= set(evals)
    assert all(evals[n].passed for n in ("qa_pairs_schema", "qa_answer_among_options", "qa_boxes_inside_images"))
