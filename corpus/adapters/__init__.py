"""Format adapters: one per native annotation format, configured per dataset by the catalog.

An adapter is a pair of plain functions:
  discover(spec, root) -> Iterator[RecordRef | Reject]   cheap; runs in the main process
  load(spec, root, ref) -> list[SourceImage]             heavy; runs in worker processes; raises RecordError
and the dataclass of the catalog `options:` they read (`options`; every field defaults to None, meaning the
adapter's own default): the catalog checks every entry's options against it through the one config loader, so a
mistyped option is an error with a did-you-mean, not a silent default.
Image pixels are read through corpus.adapters.images (PIL formats and DICOM) so every adapter gets the same
intensity handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from medlvr.corpus.discovery import import_package_modules
from medlvr.corpus.records import RecordRef, Reject, SourceImage


@dataclass(frozen=True)
class NoOptions:
    """The options of an adapter that reads none: any `options:` key in its catalog entries is an error."""


@dataclass(frozen=True)
class Adapter:
    name: str
    discover: Callable[..., Iterator[RecordRef | Reject]]
    load: Callable[..., list[SourceImage]]
    summary: str
    options: type = NoOptions  # a dataclass: the option keys the adapter reads


ADAPTERS: dict[str, Adapter] = {}


def register(name: str, discover, load, summary: str, *, options: type) -> None:
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} registered twice")
    ADAPTERS[name] = Adapter(name, discover, load, summary, options)


# Importing every module of this folder registers its adapters (a new adapter is one new file); the helper modules
# (images, mask_decoders, sidecar) register nothing.
import_package_modules(__name__)
