#!/usr/bin/env bash
# A separate virtual environment for another evaluation harness, to test it against `medlvr serve`
# (tests/evaluation/test_harnesses.py). Never the project's .venv: the harnesses declare torchvision (and yt-dlp,
# wandb, decord, OpenCV...), which the default install keeps out. Here: CPU torch 2.13.0 as in the Makefile, then
# the harness with --no-deps and exactly the packages its OpenAI-API path imports (scripts/harness/NAME.txt, pinned).
#
#   scripts/harness_venv.sh lmms-eval      # -> .venv-harness-lmms-eval (skipped when its stamp is newer than the list)
#
# Measured on the 2-core machine shared with other jobs: about 4-6 min from a warm pip cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
name=${1:?usage: scripts/harness_venv.sh NAME (one of: $(cd scripts/harness && ls *.txt | sed 's/\.txt$//' | tr '\n' ' '))}
reqs=scripts/harness/$name.txt
[ -f "$reqs" ] || { echo "harness_venv.sh: no $reqs (known: $(cd scripts/harness && ls *.txt | sed 's/\.txt$//' | tr '\n' ' '))" >&2; exit 2; }
venv=.venv-harness-$name
stamp=$venv/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt "$reqs" ]; then
  exit 0
fi
start=$SECONDS
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q --no-deps -r "$reqs"
touch "$stamp"
echo "harness_venv.sh: $venv installed in $((SECONDS - start)) s"
