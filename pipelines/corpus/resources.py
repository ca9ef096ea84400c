"""Resources of the corpus pipeline: where the corpus is stored, where the raw datasets live, the knowledge graph
and the build settings (the library's `BuildConfig`, QA text generator included). Every default runs on the bundled sample data with no
configuration: the corpus and the sample data go under the MedLVR home (`medlvr_home()`).

Nothing here reads the environment when the code location loads; env lookups happen at run time.
"""


import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from medlvr.corpus.build import BuildConfig
from medlvr.corpus.catalog import load_catalog, select
from medlvr.corpus.config import load_config
from medlvr.corpus.ingest import dataset_root
from medlvr.corpus.kg.graph import load_graph
from medlvr.corpus.sample_data import write_samples
from medlvr.pipelines.corpus.storage import is_local_url, local_path, pull, push


def medlvr_home() -> Path:
    """$MEDLVR_HOME, else $DAGSTER_HOME/medlvr, else ./medlvr_home (ignored by git)."""
    if os.environ.get("MEDLVR_HOME"):
        return Path(os.environ["MEDLVR_HOME"]).expanduser()
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]).expanduser() / "medlvr"
    return Path.cwd() / "medlvr_home"


class CorpusStorage(dg.ConfigurableResource):
    """The corpus output folder `out` that every corpus step reads and writes (`ingest/`, `qa/`, `work/`, `shards/`,
    `card/`). A local directory, or any fsspec URL (`s3://bucket/medlvr`, `gs://...`, `memory://...`): remote
    storage is staged in a local folder, pulled before a step and pushed after it (files compared by checksum)."""

    url: str = Field(default="", description="local folder or fsspec URL; empty: <MedLVR home>/corpus")
    staging_dir: str = Field(default="", description="local staging folder for remote URLs; empty: "
                                                     "<MedLVR home>/staging/<url hash>")
    storage_options: dict[str, str] = Field(default_factory=dict, description="fsspec options (no secrets: use "
                                                                              "the provider's env vars)")

    def location(self) -> str:
        return self.url or str(medlvr_home() / "corpus")

    @property
    def remote(self) -> bool:
        return not is_local_url(self.location())

    def _staging(self) -> Path:
        if self.staging_dir:
            return Path(self.staging_dir).expanduser()
        import hashlib

        return medlvr_home() / "staging" / hashlib.sha1(self.location().encode()).hexdigest()[:12]

    @contextlib.contextmanager
    def workdir(self, pull_paths: Sequence[str] = (), push_paths: Sequence[str] = ()) -> Iterator[Path]:
        """The local folder to hand to `corpus.*` functions. For remote storage, `pull_paths` (files or folders
        relative to the corpus root) are fetched first and `push_paths` uploaded after the body succeeds;
        an uploaded folder replaces the remote one (files it no longer has are deleted)."""
        if not self.remote:
            out = local_path(self.location())
            out.mkdir(parents=True, exist_ok=True)
            yield out
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.location(), **self.storage_options)
        stage = self._staging()
        stage.mkdir(parents=True, exist_ok=True)
        pull(fs, root, stage, pull_paths)
        yield stage
        push(fs, root, stage, push_paths)


class DatasetRoots(dg.ConfigurableResource):
    """Where each raw dataset lives, laid out as distributed. Per dataset: `overrides[id]`, else
    $MEDLVR_ROOT_<ID>, else `<data_root>/<id>`. `data_root` empty: $MEDLVR_DATA_ROOT, else the bundled sample
    data, written on first use under <MedLVR home>/sample_data."""

    data_root: str = Field(default="", description="folder with one sub-folder per dataset id")
    overrides: dict[str, str] = Field(default_factory=dict, description="dataset id -> local folder")
    datasets: list[str] = Field(default_factory=list, description="datasets the publish steps, schedule and "
                                                                  "sensor use; empty: the whole catalog")
    sample_seed: int = 0

    def selected(self) -> list[str]:
        return [s.id for s in select(self.datasets)]  # an unknown id: one line with a did-you-mean

    def resolved_data_root(self) -> Path | None:
        root = self.data_root or os.environ.get("MEDLVR_DATA_ROOT", "")
        return Path(root).expanduser() if root else None

    @property
    def uses_samples(self) -> bool:
        return self.resolved_data_root() is None

    def root(self, dataset: str, materialise_samples: bool = True) -> Path:
        """The dataset's root folder; with sample data, writes the dataset's sample first if missing."""
        spec = load_catalog()[dataset]
        data_root = self.resolved_data_root()
        if data_root is None:
            data_root = medlvr_home() / "sample_data"
            path = dataset_root(data_root, spec, self.overrides)
            if materialise_samples and path == data_root / dataset and not path.exists():
                _write_sample_atomically(data_root, dataset, self.sample_seed)
            return path
        return dataset_root(data_root, spec, self.overrides)


def _write_sample_atomically(data_root: Path, dataset: str, seed: int) -> None:
    data_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset}.tmp-", dir=data_root))
    try:
        write_samples(tmp, [dataset], seed)
        (data_root / "_truth").mkdir(exist_ok=True)
        os.replace(tmp / "_truth" / f"{dataset}.json", data_root / "_truth" / f"{dataset}.json")
        try:
            os.replace(tmp / dataset, data_root / dataset)
        except OSError:  # another run wrote it first
            if not (data_root / dataset).is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class KnowledgeGraphResource(dg.ConfigurableResource):
    """The validated knowledge graph used for QA (`medlvr.corpus.kg.graph.load_graph()`, cached per process)."""

    def load(self):
        return load_graph()

    def stats(self) -> dict[str, Any]:
        return self.load().stats()


class CorpusSettings(dg.ConfigurableResource):
    """The build settings: the library's own `BuildConfig` (`medlvr.corpus.build`), loaded by
    `medlvr.corpus.config` from an optional YAML file plus dotted overrides, exactly as `medlvr build-corpus
    --config FILE --set KEY=VALUE` loads it (e.g. `generator.backend=openai`, `ingest.workers=4`,
    `benchmark_roots.slake=/data/slake`). Also the threshold of the reject-share check."""

    config_path: str = Field(default="", description="BuildConfig YAML file; empty: the library defaults")
    overrides: list[str] = Field(default_factory=list, description="dotted KEY=VALUE overrides (values as YAML)")
    max_reject_share: float = Field(default=0.25, description="blocking check: rejected records / records in")

    def build_config(self):
        return load_config(BuildConfig, self.config_path or None, self.overrides)


def default_resources() -> dict[str, Any]:
    return {"storage": CorpusStorage(), "dataset_roots": DatasetRoots(), "kg": KnowledgeGraphResource(),
            "corpus_settings": CorpusSettings()}
