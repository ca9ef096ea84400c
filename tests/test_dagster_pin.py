"""The dagster family: pyproject.toml declares a compatible range (the public API only), and the project's own
install pins the whole family to one release through constraints.txt (what `make install`, and so CI, runs)."""

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, ver = line.split("==")
            pins[name] = ver
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs if r.startswith("dagster")]


def test_every_declared_dagster_package_is_pinned_within_its_range():
    pins = _pins()
    for req in _declared():
        assert req.name in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[req.name]), f"{req.name}=={pins[req.name]} is outside {req.specifier}"


def test_the_family_is_one_release():
    # dagster 1.x packages and the 0.x libraries released with them share the patch number (1.13.27 <-> 0.29.27)
    pins = _pins()
    core = {v for n, v in pins.items() if v.startswith("1.")}
    libs = {v for n, v in pins.items() if v.startswith("0.")}
    assert len(core) == 1 and len(libs) == 1, pins
    assert core.pop().split(".")[2] == libs.pop().split(".")[2]


def test_make_install_uses_the_constraints_and_this_environment_has_them():
    install = [ln for ln in (REPO / "Makefile").read_text().splitlines() if "pip install" in ln and "-e " in ln]
    assert install and all(re.search(r"-c constraints\.txt", ln) for ln in install), install
    for name, ver in _pins().items():
        assert version(name) == ver, f"{name} {version(name)} installed, constraints.txt pins {ver}"
