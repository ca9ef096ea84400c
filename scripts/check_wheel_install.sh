#!/usr/bin/env bash
# A regular (non-editable) install runs the main job outside the checkout: build a wheel from the tracked files, install
# it into a fresh virtual environment, and run `medlvr demo` from an empty folder. What an editable install hides
# (a config, the catalog or the knowledge graph read from the checkout instead of the package) fails here.
#
#   scripts/check_wheel_install.sh            # after `make install` (it reuses .venv's third-party packages)
#
# The fresh environment gets its dependencies cheaply: a .pth file appends .venv's site-packages to its sys.path.
# Python runs the .pth files of its own site-packages only, so .venv's editable finder (which maps medlvr.* to the
# checkout) stays out; the script checks that medlvr resolves to the fresh environment. Everything lives in a
# temporary folder, removed at the end. Measured on the project's 2-core machine shared with other jobs (load ~13):
# wheel build and install 24-26 s, `medlvr demo` 994-1705 s (17-29 min in all, two runs); a few minutes when quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$(cd "$VENV/bin" && pwd)/python
[ -x "$PY" ] || { echo "check_wheel_install.sh: no $VENV (run make install first)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/medlvr-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# the source: the tracked and untracked-but-not-ignored files (setuptools writes build/ and *.egg-info beside them)
mkdir "$work/src"
git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$work/src"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/medlvr-*.whl)

base=$("$PY" -c "import sys; print(sys._base_executable)")
"$base" -m venv "$work/venv"
deps=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
own=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$deps" > "$own/medlvr-deps-from-venv.pth"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
where=$("$work/venv/bin/python" -c "import medlvr.pipelines.cli as m; print(m.__file__)")
case $where in
  "$own"/medlvr/*) ;;
  *) echo "check_wheel_install.sh: medlvr resolves to $where, not the fresh environment $own" >&2; exit 1 ;;
esac
echo "check_wheel_install.sh: $(basename "$wheel") installed in $((SECONDS - start)) s; medlvr from $own/medlvr"

start=$SECONDS
mkdir "$work/empty"
(cd "$work/empty" && env -u DAGSTER_HOME -u MEDLVR_HOME "$work/venv/bin/medlvr" demo)
report=$work/empty/pipelines/dagster_home/medlvr/evaluation/report/report.html
[ -s "$report" ] || { echo "check_wheel_install.sh: the demo wrote no report at ${report#"$work"/}" >&2; exit 1; }
echo "check_wheel_install.sh: medlvr demo from an empty folder passed in $((SECONDS - start)) s"
