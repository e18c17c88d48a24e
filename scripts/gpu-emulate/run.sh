#!/usr/bin/env bash
# Compiles crypto-core's CUDA kernels as host C++ (cuda_host_shim.h) and runs them on CPU
# threads against OpenSSL AES-256-GCM. No GPU and no CUDA toolkit needed: g++ with C++20
# and the OpenSSL headers (libssl-dev). A check of the kernel's logic, not of nvcc's code
# generation or of speed; see docs/gpu.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/gpu-emulate"
mkdir -p "$out"
"${CXX:-g++}" -std=c++20 -O2 -pthread -Wall -Wextra -Wno-unknown-pragmas -Wno-deprecated-declarations \
  -Wno-unused-parameter -o "$out/emulate" "$here/emulate.cpp" -lcrypto
"$out/emulate"
