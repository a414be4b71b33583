#!/usr/bin/env bash
# Compile-check the CUDA side of qsattn_fast._C without a GPU and without a CUDA build of torch:
#   1. every csrc/*.cu with `nvcc -c` for sm_80 and sm_90 (they include only CUDA headers);
#   2. the torch glue csrc/cuda_ops.cpp with `c++ -fsyntax-only` against torch's headers (a CPU wheel
#      lacks one generated CUDA header, c10/cuda/impl/cuda_cmake_macros.h: a one-line stand-in is used).
# Usage: csrc/check_cuda.sh [python]   (exit 0 = all compiled; skips with exit 0 when nvcc is absent
# unless QSATTN_REQUIRE_NVCC=1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-python}"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "check_cuda: nvcc not found"
  [ "${QSATTN_REQUIRE_NVCC:-0}" = 1 ] && exit 1 || exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
for cu in "$here"/*.cu; do
  for arch in 80 90; do
    if "$nvcc" -c -std=c++17 -O3 -arch=sm_$arch -Werror all-warnings "$cu" -o "$tmp/$(basename "$cu").$arch.o"; then
      echo "ok   sm_$arch $(basename "$cu")"
    else
      echo "FAIL sm_$arch $(basename "$cu")"; status=1
    fi
  done
done
inc="$("$python" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths()))')"
pyinc="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
cuda_inc="$(dirname "$(command -v "$nvcc")")/../include"
mkdir -p "$tmp/stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
flags=()
for d in $inc; do flags+=("-I$d"); done
if "${CXX:-c++}" -std=c++20 -fsyntax-only -w "${flags[@]}" -I"$tmp/stub" -I"$cuda_inc" -I/usr/local/cuda/include \
    -I"$pyinc" "$here/cuda_ops.cpp"; then
  echo "ok   c++  cuda_ops.cpp (syntax)"
else
  echo "FAIL c++  cuda_ops.cpp (syntax)"; status=1
fi
exit $status
