"""The benchmark registry: everything the code base knows about a benchmark, registered by its own module.

Each module of this package that defines a benchmark ends with one `register_benchmark(...)` call naming its
loader, its sample writers (small copies of the benchmark in its distributed form, for tests and the offline
demo), the folder it lives in under an evaluation's `data_root`, whether it is external (Table 2), and its quota
and kind restriction in the 485-item efficiency subset (Table 3). Evaluation's constants (BENCHMARKS, EXTERNAL,
EFFICIENCY_QUOTAS, EFFICIENCY_KINDS, DATA_DIRS), the Dagster partitions and VLPO's `data.source` all read this
registry, so adding a benchmark is adding one module here (plus its test).

`all_benchmarks()` imports every module of the package first (modules register on import), so a new module needs
no list to be added to.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medlvr.corpus.discovery import import_package_modules
from medlvr.corpus.evalsets.base import KINDS, BenchmarkError, Sample

TABLE2_SUBSETS = ("all", "closed", *KINDS)  # what a benchmark's table2_subset may name
Loader = Callable[..., Iterator[Sample]]  # loader(root: Path, **config kwargs) -> Samples
SampleWriter = Callable[..., "int | None"]  # writer(root: Path[, rng]) -> number of test samples the loader yields


@dataclass(frozen=True)
class Benchmark:
    name: str  # the key in evaluation configs, prediction paths and report tables
    loader: Loader
    data_dir: str  # folder under an evaluation's data_root (= the folder the main sample writer fills)
    sample_writers: Mapping[str, SampleWriter] = field(default_factory=dict)  # folder name -> writer
    external: bool = True  # an external benchmark (Table 2); the in-domain one (OmniMedVQA) is not
    table2_subset: str = "all"  # the items Tables 2 and 4 score: "all", "closed" (tags.closed) or a kind (KINDS)
    efficiency_quota: int | None = None  # items in the efficiency subset (Table 3); None: not part of it
    efficiency_kind: str | None = None  # only samples of this kind enter the efficiency subset
    rank: int = 100  # column position in tables and partition order (lower first; ties by name)


BENCHMARK_REGISTRY: dict[str, Benchmark] = {}


def register_benchmark(name: str, loader: Loader, *, data_dir: str | None = None,
                       sample_writers: Mapping[str, SampleWriter] | None = None, external: bool = True,
                       efficiency_quota: int | None = None, efficiency_kind: str | None = None,
                       rank: int = 100, table2_subset: str = "all") -> Benchmark:
    """Register a benchmark (module docstring). `data_dir` defaults to the name; when sample writers are given,
    one of them must write `data_dir` (the others write variants, e.g. VQA-RAD's OSF release)."""
    if name in BENCHMARK_REGISTRY:
        raise ValueError(f"benchmark {name!r} registered twice")
    if efficiency_kind is not None and efficiency_kind not in KINDS:
        raise ValueError(f"{name}: efficiency_kind must be one of {KINDS}, got {efficiency_kind!r}")
    if table2_subset not in TABLE2_SUBSETS:
        raise ValueError(f"{name}: table2_subset must be one of {TABLE2_SUBSETS}, got {table2_subset!r}")
    bench = Benchmark(name, loader, data_dir or name, dict(sample_writers or {}), external, table2_subset,
                      efficiency_quota, efficiency_kind, rank)
    if bench.sample_writers and bench.data_dir not in bench.sample_writers:
        raise ValueError(f"{name}: no sample writer for its data_dir {bench.data_dir!r} "
                         f"(writers: {sorted(bench.sample_writers)})")
    BENCHMARK_REGISTRY[name] = bench
    return bench


def all_benchmarks() -> dict[str, Benchmark]:
    """Every registered benchmark (the package's modules imported first), in table order (rank, then name)."""
    import_package_modules("medlvr.corpus.evalsets")
    return dict(sorted(BENCHMARK_REGISTRY.items(), key=lambda kv: (kv[1].rank, kv[0])))


def get_benchmark(name: str) -> Benchmark:
    benches = all_benchmarks()
    if name not in benches:
        raise BenchmarkError(f"no benchmark registered as {name!r} (known: {sorted(benches)})")
    return benches[name]


def sample_writers() -> dict[str, tuple[str, SampleWriter]]:
    """{folder name: (benchmark name, writer)} over every registered benchmark, in table order."""
    out: dict[str, tuple[str, SampleWriter]] = {}
    for bench in all_benchmarks().values():
        for folder, fn in bench.sample_writers.items():
            if folder in out:
                raise ValueError(f"two benchmark sample writers for the folder {folder!r}")
            out[folder] = (bench.name, fn)
    return out


def write_benchmark_samples(out_dir: Path, names: list[str] | None = None, seed: int = 0) -> dict[str, int | None]:
    """Write the sample benchmarks under `out_dir/<folder>/`; `names` selects folder names or benchmark names (a
    benchmark name stands for its data_dir). Returns {folder: number of test samples (None if the writer does
    not say)}. A writer whose second parameter is required gets a seeded `numpy.random.Generator`."""
    import numpy as np

    out_dir = Path(out_dir)
    ws = sample_writers()
    if names is None:
        keys = list(ws)
    else:
        keys = []
        for n in names:
            if n in ws:
                key = n
            elif n in BENCHMARK_REGISTRY and BENCHMARK_REGISTRY[n].data_dir in ws:
                key = BENCHMARK_REGISTRY[n].data_dir
            else:
                raise BenchmarkError(f"no benchmark sample writer {n!r} (have {sorted(ws)})")
            if key not in keys:
                keys.append(key)
    counts = {}
    for i, key in enumerate(keys):
        fn = ws[key][1]
        root = out_dir / key
        root.mkdir(parents=True, exist_ok=True)
        params = list(inspect.signature(fn).parameters.values())
        if len(params) >= 2 and params[1].default is inspect.Parameter.empty:
            result = fn(root, np.random.default_rng([seed, i]))
        else:
            result = fn(root)
        counts[key] = result if isinstance(result, int) and not isinstance(result, bool) else None
    return counts
