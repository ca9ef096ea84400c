"""The registries find their members: every adapter module in corpus/adapters/ registers without a hand-kept list,
through the same helper the sample writers and the benchmarks use."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.discovery import import_package_modules

ADAPTER_DIR = Path(__file__).resolve().parents[2] / "corpus" / "adapters"


def test_every_adapter_file_registers_its_adapters():
    """An independent read of the folder: the files whose code calls register(...) are exactly the modules the
    registered adapters come from (nothing in the folder is left unimported, no list to keep in sync)."""
    calling = set()
    for path in ADAPTER_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        if path.name != "__init__.py" and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "register"
                                              for n in ast.walk(tree)):
            calling.add(path.stem)
    assert len(calling) >= 12
    assert {a.discover.__module__.rsplit(".", 1)[1] for a in ADAPTERS.values()} == calling


def test_a_new_module_is_imported_without_being_listed(tmp_path, monkeypatch):
    pkg = tmp_path / "plugpkg_i29"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("SEEN = []\n")
    for name in ("b_second", "a_first"):
        (pkg / f"{name}.py").write_text(f"from plugpkg_i29 import SEEN\nSEEN.append({name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert import_package_modules("plugpkg_i29") == ["plugpkg_i29.a_first", "plugpkg_i29.b_second"]
        assert sys.modules["plugpkg_i29"].SEEN == ["a_first", "b_second"]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "plugpkg_i29"]:
            del sys.modules[name]
