"""The shape of the codebase: layers without upward imports or cycles (import-linter), and packaging that installs
the four folders as `medlvr.*` and nothing else at the top of site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from medlvr.corpus.package_data import RUNTIME_DATA, runtime_files

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"corpus": "medlvr.corpus", "training": "medlvr.training", "evaluation": "medlvr.evaluation",
           "pipelines": "medlvr.pipelines", "configs": "medlvr.configs"}
CODE_FOLDERS = ("corpus", "training", "evaluation", "pipelines")


def test_import_contracts_hold():
    """`lint-imports` with the contracts in pyproject.toml: layers corpus < training < evaluation < pipelines,
    nothing imports the command line, no import cycle between sibling modules at any depth."""
    exe = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def test_package_list_matches_the_folders():
    """pyproject's explicit `packages` list names every folder with an __init__.py (a new sub-package cannot be
    left out of a regular install) and nothing else."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {v: k for k, v in FOLDERS.items()}
    found = sorted(FOLDERS[init.relative_to(ROOT).parts[0]] + "".join(
        "." + part for part in init.parent.relative_to(ROOT).parts[1:])
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in init.parts)
    assert sorted(cfg["packages"]) == found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_only_the_medlvr_namespace(tmp_path):
    """A regular (non-editable) build: every module lives under medlvr/, the catalog and the SLAKE graph ship as
    package data, and the console script points at the top of the layers."""
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the source folder
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel = next(tmp_path.glob("medlvr-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"medlvr", next(t for t in tops if t.endswith(".dist-info"))}
    assert "medlvr/corpus/catalog/kits23.yaml" in names and "medlvr/corpus/kg/slake/LICENSE" in names
    assert "medlvr/pipelines/cli.py" in names and "medlvr/__init__.py" not in names  # a namespace package
    shipped = [wheel_name(package, rel) for package, rel in runtime_files()]
    assert "medlvr/configs/sft_tiny.yaml" in shipped and "medlvr/corpus/kg/concepts.yaml" in shipped
    assert [n for n in shipped if n not in names] == []  # every data file the code loads at run time
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "medlvr = medlvr.pipelines.cli:main" in entry


def package_folder(package_dir: dict[str, str], package: str) -> Path:
    top = ".".join(package.split(".")[:2])  # medlvr.corpus.kg -> corpus/kg
    return ROOT / package_dir[top] / Path(*package.split(".")[2:])


def wheel_name(package: str, rel: str) -> str:
    return "/".join([*package.split("."), rel])


def test_package_data_ships_every_file_the_code_loads():
    """The data files the code reads at run time (medlvr.corpus.package_data.RUNTIME_DATA, found through
    importlib.resources) all match pyproject's package-data patterns as setuptools applies them (a glob in the
    package's folder), so a wheel carries them; the slow wheel test checks a built wheel. The list itself is held
    to the checkout: every non-Python file git tracks in the package folders is in it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: package_folder(tool["package-dir"], package) for package in tool["packages"]}
    loaded = runtime_files()
    assert {package for package, _ in loaded} == set(RUNTIME_DATA)
    missing = []
    for package, rel in loaded:
        path = folders[package] / rel
        # setuptools ships a file that a pattern of a package holding it matches (a glob in that package's folder)
        if not any(path in set(folders[owner].glob(pattern)) for owner in folders if path.is_relative_to(folders[owner])
                   for pattern in [*tool["package-data"].get("*", []), *tool["package-data"].get(owner, [])]):
            missing.append(wheel_name(package, rel))
    assert missing == []
    tracked = subprocess.run(["git", "ls-files", *FOLDERS], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    # not loaded by the code: the pipelines' README and the checkout's own Dagster instance folder's .gitignore
    # (its dagster.yaml is loaded: the settings a fresh home is given)
    data = {rel for rel in tracked if not rel.endswith(".py") and rel != "pipelines/README.md"
            and rel != "pipelines/dagster_home/.gitignore"}
    listed = {"/".join([next(k for k, v in FOLDERS.items() if v == package), rel]) for package, rel in loaded}
    assert data == listed


@pytest.mark.parametrize("folder", CODE_FOLDERS)
def test_importing_a_folder_from_the_repository_root_is_refused(folder):
    """`python -c "import corpus"` from the repository root (the folder is on sys.path there) would load a second copy
    of medlvr.corpus with its own registries; it stops at once with one line naming the import to use."""
    p = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        f"ImportError: `import {folder}` loads the checkout's folder, not the package: import medlvr.{folder} "
        "instead (installed by `pip install -e .`)")
    ok = subprocess.run([sys.executable, "-c", f"import medlvr.{folder}, sys; print(sorted(m for m in sys.modules "
                         f"if m.split('.')[0] in {CODE_FOLDERS!r}))"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "[]", ok.stderr[-2000:]


def test_no_module_finds_files_through_its_own_location():
    """Data files are found through importlib.resources (medlvr.corpus.package_data), never through `__file__`
    (`Path(__file__).parents[N] / "configs"` pointed into the checkout and broke a wheel install). The one use left
    names the package's folder to shorten traceback paths in an ingest failure line, and reads nothing."""
    uses = sorted(path.relative_to(ROOT).as_posix() for folder in CODE_FOLDERS for path in (ROOT / folder).rglob("*.py")
                  for line in path.read_text().splitlines() if "__file__" in line)
    assert uses == ["corpus/ingest.py"]
