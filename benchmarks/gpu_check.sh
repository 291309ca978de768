#!/usr/bin/env bash
# GPU check of every trainer (AMP + torch.compile, hippocampus data, one table), under a hard time limit.
#   benchmarks/gpu_check.sh                       # on a machine with a GPU; work folder ./gpu_check_work
#   benchmarks/gpu_check.sh --device cpu --dry-run -d 501 -p nnUNetPlans   # the same path on CPU, tiny
# Options are those of benchmarks/gpu_check.py (--help). PYTHON selects the interpreter (default: python3 of
# the active environment); GPU_CHECK_TIMEOUT the hard limit in seconds (default 470, under 8 minutes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-470}" "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
