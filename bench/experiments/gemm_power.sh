#!/usr/bin/env bash
# Sweep 3 on the GPU machine (bench/results/h100-grouped-gemm-sweep3-sustained.md): the grouped GEMM candidates of
# grouped_gemm_configs.cu timed under sustained load with NVML clock and power, the PyTorch / cuBLASLt peers timed
# the same way (gemm_power_peers.py), then ncu on the shipped accurate kernel, the fast one and cuBLASLt's.
# Candidates are built on the CPU machine (one binary each, -DCANDIDATE=N, into $1) and carried; see the header
# of grouped_gemm_configs.cu for the nvcc line. Usage: bash bench/experiments/gemm_power.sh <dir with cand-N>
set -u
dir=${1:?directory with cand-1..cand-10}
out=${OUT:-/tmp/l4k-sweep3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,temperature.gpu --format=csv | tee "$out/sweep3.txt"
# The shipped candidate first and last: the drift between the two is the run's noise floor.
for c in 1 2 3 4 5 6 7 8 9 10 1; do
  if [[ -x "$dir/cand-$c" ]]; then "$dir/cand-$c" >>"$out/sweep3.txt" 2>&1 || echo "candidate $c failed" >>"$out/sweep3.txt"
  else echo "candidate $c not built" >>"$out/sweep3.txt"; fi
done
python3 bench/experiments/gemm_power_peers.py >"$out/peers.txt" 2>&1
# ncu locks the clocks (its default clock control), so utilisations compare across kernels; gate_up T = 16384.
sections="--section SpeedOfLight --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
  --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
  --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second"
for c in 1 8; do
  echo "=== ncu candidate $c" >>"$out/ncu.txt"
  L4K_SUSTAIN_S=0 ncu $sections -k regex:device_kernel --launch-skip 3 --launch-count 1 "$dir/cand-$c" >>"$out/ncu.txt" 2>&1
done
echo "=== ncu torch._scaled_mm per-tensor (cuBLASLt), one expert of gate_up T = 16384; then _scaled_grouped_mm" >>"$out/ncu.txt"
# ncu matches base names: cuBLASLt's Hopper FP8 kernels are nvjet_sm90_*, torch's grouped one cutlass's device_kernel.
ncu $sections -k regex:'nvjet|device_kernel' --launch-skip 3 --launch-count 2 python3 -c "
import torch
d = 'cuda'
def codes(*s):
    return ((torch.randint(0x20, 0x50, s, device=d, dtype=torch.uint8)) | (torch.randint(0, 2, s, device=d, dtype=torch.uint8) * 0x80)).view(torch.float8_e4m3fn)
a, w, one = codes(1024, 5120), codes(16384, 5120), torch.tensor(1e-3, device=d)
for _ in range(4):
    torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
torch.cuda.synchronize()
a2, w2 = codes(16384, 5120), codes(16, 16384, 5120)
offs = torch.arange(1, 17, device=d, dtype=torch.int32) * 1024
sa, sb = torch.rand(16384, device=d) * 1e-2, torch.rand(16, 16384, device=d) * 1e-2
torch._scaled_grouped_mm(a2, w2.transpose(-2, -1), sa, sb, offs=offs, out_dtype=torch.bfloat16)
torch.cuda.synchronize()
" >>"$out/ncu.txt" 2>&1
echo done
