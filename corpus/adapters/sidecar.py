"""Sidecar metadata (A14): key-value cfg/txt, xlsx and csv tables, JSON.

Sidecars supply attributes and QA facts, never geometry. What reaches the output is filtered by the
catalog's `attributes` whitelist (see corpus.ingest), so identifiers in a sidecar never leak.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from medlvr.corpus.paths import open_confined
from medlvr.corpus.records import RecordError


def _num(v: str) -> Any:
    s = v.strip()
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def read_kv(path: Path, sep: str = ":", root: Path | None = None) -> dict[str, Any]:
    """`key: value` lines (ACDC/CAMUS Info.cfg). Blank lines and lines without the separator are skipped."""
    try:
        with open_confined(root or path.parent, path, "r", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise RecordError(f"cannot read sidecar {path.name}: {e}")
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if sep in line:
            k, v = line.split(sep, 1)
            if k.strip():
                out[k.strip()] = _num(v)
    return out


def read_table(path: Path, sheet: str | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """Rows of an .xlsx (first sheet unless named) or .csv file as dicts keyed by stripped header names."""
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            import openpyxl

            with open_confined(root or path.parent, path, "rb", "discover") as f:
                wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
                ws = wb[sheet] if sheet else wb.worksheets[0]
                rows = list(ws.iter_rows(values_only=True))
                wb.close()
        else:
            with open_confined(root or path.parent, path, "r", "discover", newline="", encoding="utf-8-sig",
                               errors="replace") as f:
                rows = list(csv.reader(f))
    except RecordError:
        raise
    except Exception as e:  # openpyxl raises many types on a corrupt workbook
        raise RecordError(f"cannot read table {path.name}: {e}")
    if not rows:
        return []
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    out = []
    for r in rows[1:]:
        if r is None or all(v is None or str(v).strip() == "" for v in r):
            continue
        out.append({h: (v.strip() if isinstance(v, str) else v) for h, v in zip(header, r) if h})
    return out


def read_json(path: Path, root: Path | None = None) -> Any:
    try:
        with open_confined(root or path.parent, path, "r", "discover", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"cannot parse JSON {path.name}: {e}", stage="discover")


def whitelist(attrs: dict[str, Any], allowed: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Only the catalog's allowed keys (case-sensitive), with JSON-safe values."""
    out = {}
    for k in allowed:
        if k in attrs and attrs[k] is not None:
            v = attrs[k]
            out[k] = v if isinstance(v, (int, float, str, bool, list)) else str(v)
    return out
