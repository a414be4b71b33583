#!/usr/bin/env bash
# Builds qsattn-cuda-emu (emulate.cpp): every csrc/*.cu kernel compiled as C++20 for the CPU emulation.
# Usage: csrc/emulation/build.sh BUILD OUT [CSRC [MAIN]]
#   BUILD  plain (-O2), asan (AddressSanitizer, also over __shared__ arrays) or tsan (ThreadSanitizer)
#   OUT    the binary to write; CSRC: the folder of the .cu sources (default: this checkout's csrc/);
#   MAIN   another driver in place of emulate.cpp (the tests' kernels that a GPU refuses)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$1" out="$2" src="${3:-$here/..}" main="${4:-$here/emulate.cpp}"
case "$build" in
  plain) flags=(-O2) ;;
  asan) flags=(-O1 -fsanitize=address -fsanitize-sections=qsattn_shared -fno-omit-frame-pointer) ;;
  tsan) flags=(-O1 -fsanitize=thread) ;;
  *) echo "build.sh: BUILD must be plain, asan or tsan, got '$build'" >&2; exit 2 ;;
esac
obj="$(mktemp -d)"
trap 'rm -rf "$obj"' EXIT
cxx=("${CXX:-g++}" -std=c++20 -g -pthread -Wall -Wno-unknown-pragmas -DQSATTN_CUDA_EMULATION -I"$src" "${flags[@]}")
pids=()
for cu in "$src"/*.cu; do
  "${cxx[@]}" -x c++ -c "$cu" -o "$obj/$(basename "$cu").o" & pids+=($!)
done
"${cxx[@]}" -c "$here/cuda_emulation.cpp" -o "$obj/runtime.o" & pids+=($!)
"${cxx[@]}" -c "$main" -o "$obj/main.o" & pids+=($!)
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status = 0 ] || { echo "build.sh: compiling for the $build build failed" >&2; exit 1; }
"${cxx[@]}" "$obj"/*.o -o "$out"
