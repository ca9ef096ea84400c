"""A2 `metaimage`: MetaImage `.mhd` header + `.raw` data (RETOUCH OCT, CAMUS legacy release).

The file format is read by `medlvr.corpus.mhd`; record discovery, label rules and slicing are shared with A1
(`medlvr.corpus.adapters.nifti`): the catalog options are the same, with `reader: metaimage`. The default
axis_order is "ZYX", so a RETOUCH B-scan is `arr[i]` (depth x A-scans).
"""

from __future__ import annotations

from pathlib import Path

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.nifti import VolumeOptions, discover_volumes, load_volume
from medlvr.corpus.records import RecordRef, SourceImage


def _discover(spec, root: Path):
    return discover_volumes(spec, root)


def _load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    return load_volume(spec, root, ref)


register("metaimage", _discover, _load,
         "MetaImage .mhd/.raw volumes (own parser; MET_UCHAR/USHORT/...; zlib; ED/ES frames; OCT B-scans)",
         options=VolumeOptions)  # the options of A1, as the module docstring says
