"""The grouped GEMM's peers under sustained load, with the SM clock and board power sampled from NVML during the
timed calls: the counterpart of bench/experiments/grouped_gemm_configs.cu (sweep 3), timed the same way (1.3 s of
back-to-back calls, then 40 calls each between its own pair of events, the median). Llama 4 Scout shapes, E = 16,
tokens spread evenly. Peers: torch._scaled_grouped_mm (rowwise scales; promoted and fast accumulation) and
torch._scaled_mm once per expert with per-tensor scales (cuBLASLt, as bench/peers/cublaslt.rs calls it).

Inputs: FP8 codes drawn as the Rust bench and the sweep draw them (0x20..0x4F with a random sign: moderate
magnitudes), and, for the grouped peer, also PyTorch's usual randn * 100 (what bench/peers/torch_grouped_gemm.py
uses): under a power limit the bit patterns change the power drawn per FLOP, so the data is part of the method.
Usage: python3 gemm_power_peers.py"""
import ctypes
import statistics
import threading
import time

import torch

dev = "cuda"


class Nvml:
    """SM clock (MHz), board power (W) and clock-event reasons through libnvidia-ml (ctypes; no pynvml needed)."""

    def __init__(self):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        assert self.lib.nvmlInit_v2() == 0, "nvmlInit failed"
        self.dev = ctypes.c_void_p()
        assert self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.dev)) == 0
        try:
            self.reasons_fn = self.lib.nvmlDeviceGetCurrentClocksEventReasons
        except AttributeError:
            self.reasons_fn = self.lib.nvmlDeviceGetCurrentClocksThrottleReasons

    def sample(self):
        c, w, r = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_ulonglong()
        self.lib.nvmlDeviceGetClockInfo(self.dev, 1, ctypes.byref(c))  # NVML_CLOCK_SM
        self.lib.nvmlDeviceGetPowerUsage(self.dev, ctypes.byref(w))
        self.reasons_fn(self.dev, ctypes.byref(r))
        return c.value, w.value / 1e3, r.value


def timed(fn, nvml, sustain_s=1.3, calls=40):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < sustain_s:
        for _ in range(8):
            fn()
        torch.cuda.synchronize()
    samples, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            samples.append(nvml.sample())
            time.sleep(0.01)

    th = threading.Thread(target=poll)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    th.start()
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    stop.set()
    th.join()
    us = statistics.median(s.elapsed_time(e) * 1e3 for s, e in ev)
    mhz = statistics.median(x[0] for x in samples) if samples else 0
    watts = statistics.median(x[1] for x in samples) if samples else 0
    reasons = 0
    for x in samples:
        reasons |= x[2]
    return us, mhz, watts, reasons


def codes(*shape):
    """FP8 codes 0x20..0x4F with a random sign, as bench/grouped_gemm.rs draws them."""
    mag = torch.randint(0x20, 0x50, shape, device=dev, dtype=torch.uint8)
    sign = torch.randint(0, 2, shape, device=dev, dtype=torch.uint8) * 0x80
    return (mag | sign).view(torch.float8_e4m3fn)


def randn100(*shape):
    return (torch.randn(*shape, device=dev) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)


def main():
    nvml = Nvml()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}", flush=True)
    E = 16

    def report(name, proj, t, flops, r):
        us, mhz, watts, reasons = r
        peak = 8192.0 * sms * mhz * 1e6
        tf = flops / us / 1e6
        print(f"{name:<52} {proj:<7} T={t:<5} {us:8.1f} us {tf:6.0f} TFLOP/s | {mhz:4.0f} MHz {watts:5.0f} W "
              f"reasons 0x{reasons:x} | {100 * tf * 1e12 / peak if peak else 0:4.1f}% of peak at that clock, "
              f"{tf / watts if watts else 0:5.2f} TFLOP/J", flush=True)

    with torch.inference_mode():
        for proj, n, k, t in (("gate_up", 16384, 5120, 16384), ("gate_up", 16384, 5120, 4096), ("down", 5120, 8192, 16384)):
            flops = 2 * t * n * k
            offs = torch.tensor([(e + 1) * t // E for e in range(E)], device=dev, dtype=torch.int32)
            bounds = [0] + offs.tolist()
            sa = torch.rand(t, device=dev) * 9e-3 + 1e-3
            sb = torch.rand(E, n, device=dev) * 9e-3 + 1e-3
            for data, draw in (("codes 0x20-0x4F", codes), ("randn*100", randn100)):
                one = draw(n, k)
                w = one.unsqueeze(0).expand(E, n, k).contiguous()
                del one
                a = draw(t, k)
                for fast in (False, True):
                    name = f"_scaled_grouped_mm{' fast' if fast else ''} [{data}]"
                    r = timed(lambda: torch._scaled_grouped_mm(a, w.transpose(-2, -1), sa, sb, offs=offs,
                                                              out_dtype=torch.bfloat16, use_fast_accum=fast), nvml)
                    report(name, proj, t, flops, r)
                if data.startswith("codes"):
                    one_a, one_b = torch.tensor(1e-3, device=dev), torch.tensor(1e-3, device=dev)

                    def loop():
                        for e in range(E):
                            lo, hi = bounds[e], bounds[e + 1]
                            torch._scaled_mm(a[lo:hi], w[e].t(), scale_a=one_a, scale_b=one_b, out_dtype=torch.bfloat16)
                    report(f"_scaled_mm per-tensor per expert (cuBLASLt) [{data}]", proj, t, flops, timed(loop, nvml))
                del w, a
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
