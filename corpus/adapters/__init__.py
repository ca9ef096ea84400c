"""Format adapters: one per native annotation format, configured per dataset by the catalog.

An adapter is a pair of plain functions:
  discover(spec, root) -> Iterator[RecordRef | Reject]   cheap; runs in the main process
  load(spec, root, ref) -> list[SourceImage]             heavy; runs in worker processes; raises RecordError
Image pixels are read through corpus.adapters.images (PIL formats and DICOM) so every adapter gets the same
intensity handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from medlvr.corpus.records import RecordRef, Reject, SourceImage


@dataclass(frozen=True)
class Adapter:
    name: str
    discover: Callable[..., Iterator[RecordRef | Reject]]
    load: Callable[..., list[SourceImage]]
    summary: str


ADAPTERS: dict[str, Adapter] = {}


def register(name: str, discover, load, summary: str) -> None:
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} registered twice")
    ADAPTERS[name] = Adapter(name, discover, load, summary)


# Importing the modules registers their adapters. Keep this list in sync with the files in this folder.
_MODULES = ("nifti", "metaimage", "lidc", "deeplesion", "fastmri", "csv_boxes", "json_boxes", "coco",
            "rle", "paired_masks", "voc", "aperio")


def _load_all() -> None:
    import importlib

    for mod in _MODULES:
        importlib.import_module(f"medlvr.corpus.adapters.{mod}")


_load_all()
