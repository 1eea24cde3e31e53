#!/usr/bin/env bash
# One device call of TPSeNCE rain training (issue 15): run from the repo root with `carry: [".tpsence-data"]`.
#   OUT=... bash scripts/tpsence_gpu.sh [--set key=value ...]             (GPU machine; ~8 minutes)
#   TPSENCE_TINY=1 OUT=/tmp/gpu15-out nice -n 19 bash scripts/tpsence_gpu.sh   (CPU rehearsal, tiny settings)
# Installs nothing: the repo goes on PYTHONPATH, and the code path needs only torch, numpy, opencv, safetensors
# (typer and rich for `rainkit generate`), which the GPU machine has. See scripts/tpsence_gpu.py for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export OUT="${OUT:-/tmp/tpsence-out}"
mkdir -p "$OUT"
if [ ! -f .tpsence-data/manifest.json ]; then
    echo "no .tpsence-data/manifest.json: run scripts/tpsence_prepare.py first, and carry .tpsence-data" >&2
    exit 2
fi
PY="${PYTHON:-python3}"
if [ "${TPSENCE_TINY:-0}" != "1" ]; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,driver_version --format=csv,noheader || true
fi
"$PY" -c "import torch, numpy, cv2, safetensors; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" scripts/tpsence_gpu.py "$@"
