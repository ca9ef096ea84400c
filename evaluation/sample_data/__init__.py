"""Small, deterministic copies of the evaluation benchmarks in the form each is distributed (JSON, CSV,
JSONL, HF parquet with Image structs, real zip archives), for tests and the offline pipeline run.

`write_benchmark_samples(out_dir, names=None)` writes `out_dir/<name>/...` for each writer. Writers live in
the modules of this package (imported if present, like `medlvr.corpus.sample_data`), each exposing
WRITERS = {name: writer(root: Path) -> int (number of test samples its loader yields)}; a module without
WRITERS contributes `write_<module>(root)` under the module's name. A writer whose second parameter is
required gets a seeded `numpy.random.Generator`. `names` selects writer names or module names.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
from pathlib import Path
from typing import Callable

_MODULES = ("omnimedvqa", "slake", "vqa_rad", "pmc_vqa", "mmmu", "medxpertqa")


def writers() -> dict[str, tuple[str, Callable]]:
    """{writer name: (module name, writer)} over the benchmark modules."""
    out: dict[str, tuple[str, Callable]] = {}
    for mod_name in _MODULES:
        found = importlib.import_module(f"medlvr.evaluation.sample_data.{mod_name}").WRITERS
        for key, fn in found.items():
            if key in out:
                raise ValueError(f"two benchmark sample writers for {key}")
            out[key] = (mod_name, fn)
    return out


def write_benchmark_samples(out_dir: Path, names: list[str] | None = None, seed: int = 0) -> dict[str, int | None]:
    """Write the sample benchmarks; returns {writer name: number of test samples (None if the writer does not
    say)}."""
    import numpy as np

    out_dir = Path(out_dir)
    ws = writers()
    if names is None:
        keys = list(ws)
    else:
        keys = []
        for n in names:
            match = [n] if n in ws else [k for k, (m, _) in ws.items() if m == n]
            if not match:
                raise KeyError(f"no benchmark sample writer {n!r} (have {sorted(ws)})")
            keys += [k for k in match if k not in keys]
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


# ---- helpers shared by the writers -------------------------------------------------------------------------


def image_bytes(seed: int, fmt: str = "PNG", size: int = 32) -> bytes:
    """A small deterministic grey image with a bright square whose place depends on `seed`."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (size, size), 20 + (seed * 37) % 60)
    x, y = (seed * 7) % (size // 2), (seed * 11) % (size // 2)
    ImageDraw.Draw(im).rectangle([x, y, x + size // 3, y + size // 3], fill=200)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def write_hf_parquet(path: Path, columns: dict[str, list], image_columns: tuple[str, ...] = ()) -> None:
    """A parquet file as `datasets` writes it: Image columns as struct<bytes: binary, path: string> (null where
    absent) and the features in the `huggingface` schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    arrays, features = {}, {}
    for name, values in columns.items():
        if name in image_columns:
            arrays[name] = pa.array(values, type=img_type)
            features[name] = {"_type": "Image"}
        else:
            arrays[name] = pa.array(values, type=pa.string())
            features[name] = {"dtype": "string", "_type": "Value"}
    table = pa.table(arrays)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """A zip with fixed timestamps so that the bytes are reproducible."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), members[name])
