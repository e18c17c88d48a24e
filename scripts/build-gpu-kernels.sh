#!/usr/bin/env bash
# Rebuilds the committed GPU kernel images of crypto-core's `bulk::gpu` engine:
#
#   crypto-core/src/bulk/gpu/kernels/aes_gcm.sm_80.cubin   (Ampere, 8.x)
#   crypto-core/src/bulk/gpu/kernels/aes_gcm.sm_90.cubin   (Hopper, 9.x)
#   crypto-core/src/bulk/gpu/kernels/aes_gcm.compute_80.ptx (anything newer: JIT by the driver)
#   crypto-core/src/bulk/gpu/kernels/ptxas.txt             (ptxas -v: registers, shared, spills)
#   crypto-core/src/bulk/gpu/kernels/SOURCE_SHA256         (hash of the .cu they were built from)
#
# nvcc comes from NVIDIA's PyPI wheels, pinned to CUDA 13.0 (the driver generation of the
# target machines), in a virtualenv under target/ — no system CUDA installation needed and
# no GPU either. The images are committed so that `cargo build --features gpu` needs
# neither nvcc nor network. Run from anywhere; needs python3 (venv, pip), a C++ host
# compiler that nvcc 13.0 accepts (g++ 12 works) and network access to PyPI.
#
# Usage: scripts/build-gpu-kernels.sh [--check]
#   --check  build into a temporary directory and fail if the committed images differ.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crypto-core/src/bulk/gpu/aes_gcm.cu"
out="$root/crypto-core/src/bulk/gpu/kernels"
venv="$root/target/nvcc-venv"

# nvcc, its front end (nvvm: cicc) and its headers must be one release: pip would otherwise
# resolve nvidia-nvvm to the newest (seen: 13.5 with nvcc 13.0).
pins=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
)

check=0
if [[ "${1:-}" == "--check" ]]; then
  check=1
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"

cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
nvcc="$cuda/bin/nvcc"
export PATH="$cuda/bin:$cuda/nvvm/bin:$PATH"

version="$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')"
echo "nvcc: $nvcc"
echo "nvcc version: $version"
case "$version" in
  13.0.*) ;;
  *) echo "error: expected nvcc 13.0.x, got '$version'" >&2; exit 1 ;;
esac

dest="$out"
if [[ $check == 1 ]]; then
  dest="$(mktemp -d)"
  trap 'rm -rf "$dest"' EXIT
fi
mkdir -p "$dest"

# -O3 for device code; no -use_fast_math (integer code only). -Xptxas -v prints each
# kernel's registers, shared memory and spills. LINEINFO=1 adds source lines for ncu and
# compute-sanitizer (same code, but the cubins grow about fourfold: not for committing).
lineinfo=()
if [[ "${LINEINFO:-0}" == 1 ]]; then
  lineinfo=(-lineinfo)
fi
common=(-std=c++17 -O3 "${lineinfo[@]}" -I"$cuda/include" -Xptxas -v,-warn-spills,-warn-lmem-usage)

log="$dest/ptxas.txt"
{
  echo "# ptxas -v of crypto-core/src/bulk/gpu/aes_gcm.cu (scripts/build-gpu-kernels.sh)"
  echo "# nvcc $version"
} > "$log"

for sm in 80 90; do
  echo "== sm_$sm cubin" | tee -a "$log"
  "$nvcc" "${common[@]}" -cubin -gencode "arch=compute_$sm,code=sm_$sm" \
    -o "$dest/aes_gcm.sm_$sm.cubin" "$src" 2>&1 | tee -a "$log"
done
echo "== compute_80 ptx" | tee -a "$log"
"$nvcc" -std=c++17 -O3 "${lineinfo[@]}" -I"$cuda/include" -ptx -gencode "arch=compute_80,code=compute_80" \
  -o "$dest/aes_gcm.compute_80.ptx" "$src" 2>&1 | tee -a "$log"

# The PTX and the reports name the source by absolute path; make them machine independent.
# Compile times vary from run to run: keep them out of the committed report.
sed -i "s|$root/||g" "$dest/aes_gcm.compute_80.ptx" "$log"
sed -i '/Compile time = /d' "$log"

# The images' source, by hash: a unit test (bulk::kernel_ref) fails when aes_gcm.cu changes
# without a rebuild.
(cd "$(dirname "$src")" && sha256sum "$(basename "$src")") > "$dest/SOURCE_SHA256"

if [[ $check == 1 ]]; then
  status=0
  for f in aes_gcm.sm_80.cubin aes_gcm.sm_90.cubin aes_gcm.compute_80.ptx SOURCE_SHA256; do
    if ! cmp -s "$dest/$f" "$out/$f"; then
      echo "stale: crypto-core/src/bulk/gpu/kernels/$f differs from a fresh build" >&2
      status=1
    fi
  done
  exit $status
fi

ls -l "$dest"
echo "wrote $dest"
