#!/usr/bin/env bash
# The main job against both ends of pyproject's dagster range: for each end, a virtual environment with the project
# and that dagster family (dagster, dagster-webserver, dagster-pipes), then the main job's tests in it.
#
#   scripts/check_dagster_range.sh            # both ends
#   scripts/check_dagster_range.sh low        # the range's floor only (today 1.13.0)
#   scripts/check_dagster_range.sh high       # the newest release of the family that installs together
#
# low pins the three packages to the floor of pyproject's `dagster>=X,<Y`; high lets pip choose within the range,
# which gives the newest release that every package of the family has. The extras' dagster-postgres, dagster-k8s
# and dagster-dg-cli pin dagster to their own release and lag behind it, so they are left out here (their versions
# are the ones `make install` resolves, which `make test` covers). Each end: an install (CPU torch first, as in the
# Makefile; 10-16 min measured on a loaded 2-core machine) and the main job's tests (~3 min quiet, ~40 min under
# that load). Environments: .venv-dagster-low, .venv-dagster-high.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
ends=("$@")
[ ${#ends[@]} -gt 0 ] || ends=(low high)

floor=$("$PYTHON" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.fullmatch(r"dagster>=([0-9.]+),<[0-9.]+", d).group(1) for d in deps if d.startswith("dagster>=")))
EOF
)
# the dev extra's test tools, without the dagster-* packages that pin dagster themselves
tools=$("$PYTHON" - <<'EOF'
import tomllib
dev = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
print(" ".join(d for d in dev if not d.startswith("dagster")))
EOF
)

for end in "${ends[@]}"; do
  case $end in
    low) family=("dagster==$floor" "dagster-webserver==$floor" "dagster-pipes==$floor") ;;
    high) family=() ;;
    *) echo "check_dagster_range.sh: unknown end '$end' (low or high)" >&2; exit 2 ;;
  esac
  venv=.venv-dagster-$end
  start=$SECONDS
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q torch==2.13.0
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q -e . $tools "${family[@]}"
  version=$("$venv/bin/python" -c "import dagster, dagster_webserver, dagster_pipes; print(dagster.__version__)")
  echo "check_dagster_range.sh: $end: dagster $version installed in $((SECONDS - start)) s"
  start=$SECONDS
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/pipelines/test_main_job.py \
    tests/pipelines/test_main_job_runs.py tests/pipelines/test_pipes_reader.py tests/pipelines/test_staleness.py
  echo "check_dagster_range.sh: $end: the main job's tests passed on dagster $version in $((SECONDS - start)) s"
done
