#!/usr/bin/env bash
# Sets up ./.venv with energy-nas and everything it needs, on a fresh machine.
#
#   bash .ci/setup.sh          # the service: torch, optuna, ray[tune], sqlalchemy, codecarbon, onnx, dashboard,
#                              # wandb, optuna-dashboard (every extra in `all`; tensorrt is not: GPU machines only)
#   bash .ci/setup.sh --test   # plus test tools, Debian's chromium (browser tests) and PostgreSQL (storage tests)
#
# torch: on a machine without an NVIDIA GPU this installs the CPU wheel (torch==2.13.0, which these
# machines hold on local disk). With a GPU (nvidia-smi works) it installs pip's default CUDA build; a
# torch already present in .venv is always kept, so GPU users are never pinned to the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the default (CUDA) torch build" >&2
    "${pip[@]}" install torch
  else
    echo "setup: no NVIDIA GPU: installing the CPU torch wheel (torch==2.13.0)" >&2
    "${pip[@]}" install torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
  fi
fi

extras=all
[ $want_test = 1 ] && extras=all,dev
"${pip[@]}" install -e ".[${extras}]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import nas, torch; print(f'setup: energy-nas {nas.__version__}, torch {torch.__version__}')" >&2

if [ $want_test = 1 ]; then
  need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
