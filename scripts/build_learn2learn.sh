#!/usr/bin/env bash
# Build learn2learn 0.2.0 (the optional `bench` extra, for `mtml benchmark --against learn2learn`)
# on Python >= 3.11, where its source release does not build as published (issue 17: the .c
# files it ships come from an old Cython; its sdist carries Cython 0.29.15). Regenerating them
# with Cython < 3.1 and building a wheel worked here (Python 3.11, torch 2.15; Cython 3.0.12).
# learn2learn imports gym and scipy at import time, so gym comes along (none of its other
# requirements is needed to import it). --no-build-isolation: with --no-binary :all: pip would
# otherwise build the build requirements (Cython) from source too; setuptools must be present.
# Usage: bash scripts/build_learn2learn.sh [DIR]   (default /tmp/learn2learn-build), then
#   pip install DIR/wheel/*.whl gym && pip install -c constraints.txt numpy
# (the second command puts numpy back to our pin: learn2learn requires qpth, whose release caps
# numpy < 2, and pandas 3 does not import with numpy 1; learn2learn itself runs on numpy 2).
set -euo pipefail
DIR=${1:-/tmp/learn2learn-build}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
cd "$DIR"
$PY -m pip download --no-deps --no-binary :all: --no-build-isolation learn2learn==0.2.0 -d .
tar xzf learn2learn-0.2.0.tar.gz
$PY -m pip install --target "$DIR/cython" "cython<3.1"
cd learn2learn-0.2.0
for f in meta_dataset task_dataset transforms; do
  PYTHONPATH="$DIR/cython" $PY -m cython -3 "learn2learn/data/$f.pyx" -o "learn2learn/data/$f.c"
done
PYTHONPATH="$DIR/cython" $PY -m pip wheel --no-deps --no-build-isolation -w "$DIR/wheel" .
echo "built: $(ls "$DIR"/wheel/learn2learn-*.whl)"
