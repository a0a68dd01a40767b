"""PyTorch's all_to_all_single (NCCL underneath) over the bytes of expert-parallel dispatch and combine (issue 17):
the peer of ops/expert_parallel.rs's exchange. Needs several GPUs; run one process per GPU under torchrun:

    torchrun --nproc-per-node 8 bench/peers/torch_all_to_all.py --json peers.jsonl

(run as a plain script, it relaunches itself so on every GPU of the machine, and measures nothing on one GPU).
On the GPU machine; NOT run yet: no multi-GPU machine was available when it was written). Rank 0 writes one JSON
line per case to --json, in torch_peers.py's record format (family expert_parallel, peer "torch all_to_all_single").

Cases, per GPU: decode (128 tokens) and prefill (8192 tokens), hidden 5120, top-1 (k = 1):
- dispatch_real / combine_real: the real bytes of a balanced routing, tokens * k / N rows to every rank (itself
  included): dispatch rows are FP8 + one f32 scale (hidden + 4 bytes), combine rows bf16 (2 * hidden bytes). This is
  "a bare all-to-all of the same bytes", the target's reference.
- dispatch_capacity / combine_capacity: what our fixed-capacity exchange moves, `capacity` rows to every rank
  (default tokens * k, the worst case; --capacity-factor f gives ceil(f * tokens * k / N)) plus the dispatch slab's
  header (L int32 counts padded to 16 bytes, the slab rounded up to 256 bytes), as ops/expert_parallel.rs lays
  them out.
Timing: CUDA events around `reps` back-to-back collectives (after a warm-up), median of `samples` samples; every
rank times, rank 0's median is recorded with the slowest rank's beside it (max_us). The all-to-all is captured in
a CUDA graph and replayed when --graph is given (NCCL supports capture), else launched eagerly.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist

HIDDEN = 5120
K = 1
EXPERTS = 128  # Maverick


def slab_bytes(capacity, hidden, local_experts):
    """One dispatch slab (ops/expert_parallel.rs Layout::slab_bytes)."""
    rows_off = -(-4 * local_experts // 16) * 16
    scales_off = -(-(rows_off + capacity * hidden) // 16) * 16
    return -(-(scales_off + 4 * capacity) // 256) * 256


def time_collective(fn, reps, samples, graph):
    """Median and max over ranks of microseconds per call."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            with torch.cuda.graph(g, stream=s):
                for _ in range(reps):
                    fn()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        run = g.replay
    times = []
    for _ in range(samples):
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if graph:
            run()
        else:
            for _ in range(reps):
                run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    times.sort()
    med = torch.tensor([times[len(times) // 2]], device="cuda")
    worst = med.clone()
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return med.item(), worst.item(), times[0], times[-1]


def main():
    if "RANK" not in os.environ:
        # Started as a plain script (gpu-run.sh's peers step): relaunch under torchrun on every GPU there is.
        n = torch.cuda.device_count()
        if n < 2:
            print(f"torch_all_to_all: needs at least 2 GPUs under torchrun ({n} here): nothing measured", flush=True)
            return
        os.execvp(sys.executable, [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
                                   os.path.abspath(__file__), *sys.argv[1:]])
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--tokens", default="128,8192", help="tokens per GPU, comma-separated")
    ap.add_argument("--capacity-factor", type=float, default=0.0,
                    help="capacity = ceil(f * tokens * k / N); 0: the worst case tokens * k")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--graph", action="store_true", help="replay the collectives from a CUDA graph")
    args = ap.parse_args()

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    if EXPERTS % world:
        raise SystemExit(f"{EXPERTS} experts do not split over {world} ranks")
    local_experts = EXPERTS // world
    name = torch.cuda.get_device_name()
    sink = open(args.json, "a") if rank == 0 else None

    def case(variant, tokens, per_peer_bytes):
        """all_to_all_single of per_peer_bytes to every rank (itself included), uint8."""
        send = torch.randint(0, 255, (world * per_peer_bytes,), dtype=torch.uint8, device="cuda")
        recv = torch.empty_like(send)
        us, worst, lo, hi = time_collective(lambda: dist.all_to_all_single(recv, send), args.reps, args.samples,
                                            args.graph)
        moved = world * per_peer_bytes  # bytes this rank sends (and receives), its own slab included
        shape = f"{tokens}x{HIDDEN}"
        if rank == 0:
            sink.write(json.dumps(dict(source="torch", peer="torch all_to_all_single", family="expert_parallel",
                                       variant=variant, shape=shape, tokens=tokens, bytes=moved, us=us,
                                       us_min=lo, us_max=hi, max_us=worst, world=world, graph=args.graph,
                                       device=name)) + "\n")
            sink.flush()
            print(f"expert_parallel/{variant}/{shape} x{world}: {us:.1f} us (slowest rank {worst:.1f}), "
                  f"{moved / us / 1e3:.0f} GB/s per rank", flush=True)

    for tokens in [int(t) for t in args.tokens.split(",") if t]:
        pairs = tokens * K
        if args.capacity_factor > 0:
            capacity = min(pairs, math.ceil(args.capacity_factor * pairs / world))
        else:
            capacity = pairs
        real_rows = math.ceil(pairs / world)
        case("dispatch_real", tokens, real_rows * (HIDDEN + 4))
        case("combine_real", tokens, real_rows * 2 * HIDDEN)
        case("dispatch_capacity", tokens, slab_bytes(capacity, HIDDEN, local_experts))
        case("combine_capacity", tokens, capacity * 2 * HIDDEN)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
