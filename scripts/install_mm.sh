#!/usr/bin/env bash
# Installs the optional `mm` extra (OpenMMLab: mmengine 0.10.7, mmcv 2.1.0 with ops, mmdet 3.3.0,
# mmsegmentation 1.2.2, ftfy, regex) into the project's venv. `make install-mm` runs it; it is idempotent.
#
# mmdet 3.3.0 / mmseg 1.2.2 need mmcv >= 2.0.0rc4, < 2.2.0, and mmcv 2.1.0 has no wheel for torch 2.14, so it is
# built from the PyPI sdist with its C++ ops (MMCV_WITH_OPS=1), with these fixes:
#   * setuptools==80.10.2: mmcv's setup.py imports pkg_resources (gone in setuptools >= 81);
#   * C++20: torch 2.14's headers refuse C++17, which mmcv's setup.py forces; gcc honours the last -std, so a
#     compiler wrapper (CXX) appends -std=c++20;
#   * --no-build-isolation: the build must see the venv's torch;
#   * ftfy and regex: mmseg imports them without declaring them (they are in pyproject's `mm` extra).
# The built wheel is kept in $MIMIQ_WHEEL_CACHE (default .cache/wheels/, git-ignored), in a folder named after the
# torch version, Python version and ops flavour (cpu | cuda), so a reinstall takes seconds, not minutes.
#
# Environment: VENV (.venv), MAX_JOBS (compile jobs, default: CPU count), FORCE_CUDA=1 (build the CUDA ops; needs
# nvcc, e.g. `module load cuda`; set TORCH_CUDA_ARCH_LIST for the GPUs), MIMIQ_WHEEL_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
MMCV_VERSION=2.1.0
SETUPTOOLS_PIN=setuptools==80.10.2
[ -x "$PY" ] || { echo "install_mm: $PY not found; run 'make install' first" >&2; exit 1; }
t0=$(date +%s)

# Build tools pinned for mmcv's setup.py, then the extra itself (mmdet/mmseg do not declare mmcv: no resolver clash).
"$PY" -m pip install -q "$SETUPTOOLS_PIN" wheel ninja psutil
"$PY" -m pip install -q -e ".[mm]"

flavour=cpu
if [ "${FORCE_CUDA:-0}" = "1" ]; then flavour=cuda; fi
tag=$("$PY" -c "import sys, torch; print(f'torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}')")
wheel_dir="${MIMIQ_WHEEL_CACHE:-.cache/wheels}/${tag//+/_}-$flavour"
mkdir -p "$wheel_dir"
wheel=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "install_mm: building mmcv $MMCV_VERSION with ops ($flavour) for $tag, MAX_JOBS=${MAX_JOBS:-$(nproc)} ..."
  wrap=$(mktemp -d)
  trap 'rm -rf "$wrap"' EXIT
  real_cxx=${CXX:-c++}
  printf '#!/bin/sh\nexec %s "$@" -std=c++20\n' "$real_cxx" > "$wrap/cxx20"
  chmod +x "$wrap/cxx20"
  b0=$(date +%s)
  CXX="$wrap/cxx20" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps --no-binary mmcv "mmcv==$MMCV_VERSION" -w "$wheel_dir"
  wheel=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
  echo "install_mm: built $wheel in $(( $(date +%s) - b0 )) s"
else
  echo "install_mm: reusing the cached wheel $wheel"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q "$wheel"  # mmcv's own dependencies (addict, yapf, opencv-python, ...)

# The check that matters: the compiled ops load, and mmdet / mmseg accept this mmcv.
"$PY" -c "import mmcv, mmcv.ops, mmdet, mmseg, mmdet.apis, mmseg.apis; print('install_mm: mmcv', mmcv.__version__, \
'(ops), mmdet', mmdet.__version__, ', mmseg', mmseg.__version__)"
echo "install_mm: done in $(( $(date +%s) - t0 )) s"
