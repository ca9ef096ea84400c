"""The data files the code reads at run time, found through importlib.resources in the installed package (never
through the checkout's layout), and the list of them that the packaging tests hold the wheel to.

The default configs live in the repository's `configs/` folder, installed as the data package `medlvr.configs`
(pyproject's package-dir); the catalog and the knowledge graph's data live in `medlvr.corpus`. An editable install
and a wheel install resolve the same names, so `medlvr demo` runs from any folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

CONFIGS_PACKAGE = "medlvr.configs"
# package -> glob patterns (relative to the package) of every data file the code loads at run time. A loader that
# reads a new kind of file adds its pattern here; tests/test_architecture.py checks that pyproject's package-data
# ships each matching file and that a built wheel contains it.
RUNTIME_DATA: dict[str, tuple[str, ...]] = {
    CONFIGS_PACKAGE: ("*.yaml",),
    "medlvr.corpus": ("catalog/*.yaml", "kg/concepts.yaml", "kg/slake/*"),
    # the Dagster instance settings the main job gives a home that has none (pipelines/main_job.py); named here,
    # not imported, so the packaging tests hold the wheel to it too
    "medlvr.pipelines": ("dagster_home/dagster.yaml",),
}


class PackageDataError(FileNotFoundError):
    pass


def package_path(package: str, *parts: str) -> Path:
    """The file or folder `parts` inside the installed `package`, as a filesystem path (the package is installed
    as files: an editable install maps it to the checkout, a wheel unpacks it into site-packages)."""
    found = importlib.resources.files(package).joinpath(*parts)
    if not isinstance(found, Path):  # e.g. a zipped install: the loaders read folders with glob
        raise PackageDataError(f"{package} is not installed as files ({type(found).__name__}); install it with pip")
    return found


def shipped_config(name: str) -> Path:
    """The default config `name` (e.g. "sft_tiny.yaml") that ships with the package: the repository's configs/."""
    path = package_path(CONFIGS_PACKAGE, name)
    if not path.is_file():
        names = ", ".join(p.name for p in sorted(package_path(CONFIGS_PACKAGE).glob("*.yaml")))
        raise PackageDataError(f"no shipped config {name!r} in {CONFIGS_PACKAGE} (it has: {names})")
    return path


def runtime_files() -> list[tuple[str, str]]:
    """(package, posix path relative to it) of every data file RUNTIME_DATA names, as installed now."""
    out = []
    for package, patterns in RUNTIME_DATA.items():
        root = package_path(package)
        for pattern in patterns:
            out += [(package, p.relative_to(root).as_posix()) for p in sorted(root.glob(pattern)) if p.is_file()]
    return out
