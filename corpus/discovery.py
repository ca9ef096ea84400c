"""Registries that find their members: importing every module of a package runs the `register...` calls in them,
so a new adapter, sample writer or benchmark is one new file, listed nowhere else."""

from __future__ import annotations

import importlib
import pkgutil


def import_package_modules(package: str) -> list[str]:
    """Import every module directly inside `package` (a dotted name); returns their dotted names, sorted."""
    pkg = importlib.import_module(package)
    names = sorted(f"{package}.{mod.name}" for mod in pkgutil.iter_modules(pkg.__path__))
    for name in names:
        importlib.import_module(name)
    return names
