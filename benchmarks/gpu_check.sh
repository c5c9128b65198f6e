#!/usr/bin/env bash
# One short GPU pass over every benchmark, for a session that is lent a device (about 15
# minutes of device time in all): smcdiff on --device cuda, the CPU peers as usual.
# Run from the repository root after `pip install -e .` and `bash benchmarks/install_peers.sh`;
# each table is also written to $OUT (or ./gpu-results) for the closing note.
set -euo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch; assert torch.cuda.is_available(); print('torch', torch.__version__, torch.version.cuda)"
cd benchmarks
run() { local name=$1; shift; echo "== $name $*"; timeout 240 python "$@" 2>&1 | tee "../$out/$name.md" || echo "FAILED: $name"; }
# The 1e9 particle-steps/s target (N x B >= 1e7) and the ordinary cases, float32 and float64.
run filtering filtering.py --device cuda --large --repeats 3 --pyro-runs 1
run resampling resampling.py --device cuda --quick --repeats 5
run smoothing smoothing.py --device cuda --quick --repeats 3
run solvers solvers.py --device cuda --quick
run fkc fkc.py --device cuda --quick
