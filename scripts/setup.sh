#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain (nvcc, nvvm, cudart, crt, cccl) and the CUTLASS 4.2 headers from their PyPI
# wheels into one cache directory, so the kernels build on a machine with no CUDA toolkit and no GPU.
#
#   scripts/setup.sh            install (a second run finds the stamp and does nothing)
#   L4K_CUDA_CACHE=DIR ...      install somewhere else (default: ~/.cache/llama4-kernels/cuda-13.0)
#
# build.rs looks in the same place (after CUDA_HOME and PATH), so nothing needs exporting afterwards.
# A user with their own CUDA 13 toolkit and CUTLASS checkout skips this and sets CUDA_HOME / CUTLASS_DIR.
set -euo pipefail

cache="${L4K_CUDA_CACHE:-$HOME/.cache/llama4-kernels/cuda-13.0}"
# Pinned: the GPU machine's driver and nvcc are 13.0, and CUTLASS 4.2 is what the peers were measured with.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cutlass==4.2.0.0
)
stamp="$cache/.installed"
want="$(printf '%s\n' "${wheels[@]}")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: CUDA 13.0 + CUTLASS 4.2 already in $cache"
  exit 0
fi

case "$(uname -m)" in
  x86_64) plat=x86_64 ;;
  aarch64) plat=aarch64 ;;
  *) echo "setup: no CUDA wheels for $(uname -m)" >&2; exit 1 ;;
esac
python=$(command -v python3 || command -v python) || { echo "setup: needs python3 with pip" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup: downloading ${#wheels[@]} wheels"
"$python" -m pip download -q --no-deps --only-binary=:all: --dest "$tmp/whl" \
  --platform "manylinux2014_$plat" --platform "manylinux_2_17_$plat" --platform "manylinux_2_27_$plat" \
  --platform "manylinux_2_12_$plat" --platform "manylinux2010_$plat" --python-version 3.11 "${wheels[@]}"

rm -rf "$cache.partial"
mkdir -p "$cache.partial"
for whl in "$tmp"/whl/*.whl; do
  "$python" - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
done
root="$cache.partial"
# The CUDA wheels share one tree under nvidia/cu13; CUTLASS ships its headers inside cutlass_library.
cp -a "$tmp/x/nvidia/cu13/." "$root/"
mkdir -p "$root/cutlass"
cp -a "$tmp/x/cutlass_library/source/include" "$root/cutlass/include"
# zipfile drops the executable bit.
chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
# nvcc.profile looks for headers and libraries under targets/<arch>-linux, as in a full toolkit.
mkdir -p "$root/targets/$plat-linux"
ln -sfn ../../include "$root/targets/$plat-linux/include"
ln -sfn ../../lib "$root/targets/$plat-linux/lib"
# cudart from the wheel is lib/libcudart.so.13: give the linker its unversioned name too.
[[ -e "$root/lib/libcudart.so" ]] || ln -s libcudart.so.13 "$root/lib/libcudart.so"

"$root/bin/nvcc" --version | tail -2
printf '%s\n' "${wheels[@]}" >"$root/.installed"
rm -rf "$cache"
mv "$root" "$cache"
echo "setup: installed in $cache (CUDA_HOME=$cache, CUTLASS_DIR=$cache/cutlass)"
