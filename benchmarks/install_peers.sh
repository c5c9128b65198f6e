#!/usr/bin/env bash
# Install the benchmark peers into the current Python environment, keeping its torch and
# numpy 2 (recipes from shared/notes/environment.md):
#
#   particles 0.4  declares numpy<2 but runs on numpy 2: install its runtime deps, then it
#                  with --no-deps (a plain install would downgrade numpy and break jax);
#   torchcfm 1.0.7 pulls torchdyn -> torchvision -> a CUDA torch: --no-deps as well;
#   diffusers, blackjax, POT, torchdiffeq install normally.
#
# Every install goes through constraints-cpu.txt in the repository root (torch==2.13.0, the
# CPU wheel on these machines), so nothing replaces the installed torch. On a GPU machine
# pass another constraints file: CONSTRAINTS=/path/to/file bash benchmarks/install_peers.sh
# Never add --upgrade-strategy eager: it would swap the CPU torch for a CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="${CONSTRAINTS:-$ROOT/constraints-cpu.txt}"
PY="${PYTHON:-python}"
PIP=("$PY" -m pip install -c "$CONSTRAINTS")

echo "installing benchmark peers with constraints $CONSTRAINTS"
"${PIP[@]}" numba joblib scikit-learn
"${PIP[@]}" --no-deps "particles==0.4"
"${PIP[@]}" diffusers blackjax pot torchdiffeq
"${PIP[@]}" --no-deps "torchcfm==1.0.7"

"$PY" - <<'PY'
import importlib
import sys
from importlib.metadata import version

import torch

print(f"torch {torch.__version__} (cuda {torch.version.cuda})")
missing = []
for dist, module in [("numpy", "numpy"), ("particles", "particles"), ("numba", "numba"),
                     ("diffusers", "diffusers"), ("blackjax", "blackjax"), ("POT", "ot"),
                     ("torchdiffeq", "torchdiffeq"), ("torchcfm", "torchcfm")]:
    try:
        importlib.import_module(module)
        print(f"{dist} {version(dist)}")
    except Exception as err:  # report every failure, then fail once
        missing.append(dist)
        print(f"{dist}: cannot import ({type(err).__name__}: {err})")
sys.exit(f"not importable: {', '.join(missing)}" if missing else 0)
PY
