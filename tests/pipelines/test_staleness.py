"""pipelines/staleness.py on a small graph with Dagster's staleness rules as the expectation: a partitioned source
with user-provided data versions (like raw_dataset), a partitioned asset on it, an unpartitioned asset on every
partition, and one more downstream, all with code versions."""

import dagster as dg
import pytest

from medlvr.pipelines.staleness import Staleness

PARTS = dg.StaticPartitionsDefinition(["p1", "p2"])


def _defs(versions: dict[str, str], b_version: str = "b1") -> dg.Definitions:
    @dg.asset(partitions_def=PARTS, code_version="a1")
    def a(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(versions[context.partition_key]))

    @dg.asset(partitions_def=PARTS, deps=[a], code_version=b_version)
    def b() -> None: ...

    @dg.asset(deps=[b], code_version="c1")
    def c() -> None: ...

    @dg.asset(deps=[c], code_version="d1")
    def d() -> None: ...

    return dg.Definitions(assets=[a, b, c, d])


def _run(defs, instance, partition=None, keys=("a", "b")):
    selection = [dg.AssetKey(k) for k in keys]
    assets = [defs.resolve_assets_def(k) for k in ("a", "b", "c", "d")]
    assert dg.materialize(assets, instance=instance, partition_key=partition, selection=selection).success


def _fresh(defs, instance) -> dict[str, bool]:
    s = Staleness(defs, instance)
    return {f"{k}[{p}]" if p else k: s.up_to_date(dg.AssetKey(k), p)
            for k, p in (("a", "p1"), ("a", "p2"), ("b", "p1"), ("b", "p2"), ("c", None), ("d", None))}


@pytest.fixture
def built():
    instance = dg.DagsterInstance.ephemeral()
    versions = {"p1": "v1", "p2": "v1"}
    defs = _defs(versions)
    for p in ("p1", "p2"):
        _run(defs, instance, p)
    _run(defs, instance, keys=("c", "d"))
    return defs, instance, versions


def test_everything_materialised_is_up_to_date(built):
    defs, instance, _ = built
    assert all(_fresh(defs, instance).values())
    assert Staleness(defs, instance).data_version(dg.AssetKey("a"), "p1") == "v1"


def test_missing_is_not_up_to_date():
    instance = dg.DagsterInstance.ephemeral()
    defs = _defs({"p1": "v1", "p2": "v1"})
    _run(defs, instance, "p1")
    fresh = _fresh(defs, instance)
    assert fresh["a[p1]"] and fresh["b[p1]"] and not fresh["a[p2]"] and not fresh["c"]


def test_a_new_upstream_data_version_makes_its_partition_and_everything_after_stale(built):
    defs, instance, versions = built
    versions["p1"] = "v2"
    _run(defs, instance, "p1", keys=("a",))
    assert _fresh(defs, instance) == {"a[p1]": True, "a[p2]": True, "b[p1]": False, "b[p2]": True, "c": False,
                                      "d": False}


def test_the_same_data_version_again_changes_nothing(built):
    defs, instance, _ = built
    _run(defs, instance, "p1", keys=("a",))
    assert all(_fresh(defs, instance).values())


def test_a_new_code_version_makes_the_asset_and_everything_after_stale(built):
    _, instance, versions = built
    fresh = _fresh(_defs(versions, b_version="b2"), instance)
    assert fresh == {"a[p1]": True, "a[p2]": True, "b[p1]": False, "b[p2]": False, "c": False, "d": False}


def test_rematerialising_a_stale_chain_makes_it_up_to_date(built):
    defs, instance, versions = built
    versions["p1"] = "v2"
    _run(defs, instance, "p1")
    assert not _fresh(defs, instance)["c"]
    _run(defs, instance, keys=("c", "d"))
    assert all(_fresh(defs, instance).values())
