"""Tests of bench/report.py on run folders laid out as gpu-bundle/run.sh leaves them (CPU only; .ci/run runs
them): python3 -m unittest discover -s bench -p '*_test.py'"""
import contextlib
import io
import json
import os
import sys
import tarfile
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def estimate(point, lo, hi):
    return {"confidence_interval": {"confidence_level": 0.95, "lower_bound": lo, "upper_bound": hi},
            "point_estimate": point, "standard_error": (hi - lo) / 4}


def criterion_files(full_id, slope=None, mean=(0.0, 0.0, 0.0), throughput=None):
    """benchmark.json and estimates.json as criterion 0.5 writes them under <home>/<directory>/new/."""
    group, value = full_id.rsplit("/", 1)
    bench = {"group_id": group, "function_id": None, "value_str": value,
             "throughput": {"Bytes": throughput} if throughput else None, "full_id": full_id,
             "directory_name": full_id.replace("/", "_", full_id.count("/") - 1), "title": full_id}
    est = {"mean": estimate(*mean), "median": estimate(*mean), "median_abs_dev": estimate(1.0, 0.5, 1.5),
           "slope": estimate(*slope) if slope else None, "std_dev": estimate(2.0, 1.0, 3.0)}
    d = bench["directory_name"] + "/new/"
    return {d + "benchmark.json": json.dumps(bench), d + "estimates.json": json.dumps(est)}


def tar_xz(path, files):
    with tarfile.open(path, "w:xz") as t:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


DEVICE = "NVIDIA H200 (139 GiB)"
# A memory-bound row, an FP8 GEMM row bound by the tensor cores, and its cuBLASLt peer timed through criterion.
RMS = dict(source="llama4-kernels", id="rmsnorm/plain/16384x5120", family="rmsnorm", variant="plain",
           shape="16384x5120", tokens=16384, bytes=335_554_560, flops=0, device=DEVICE)
GEMM = dict(source="llama4-kernels", id="grouped_gemm/auto/gate_up_T16384_E16", family="grouped_gemm",
            variant="auto", shape="gate_up_T16384_E16", tokens=16384, bytes=2_030_043_136,
            flops=2 * 16384 * 16384 * 5120, math="fp8", device=DEVICE)
CUBLAS = dict(GEMM, source="cudarc", id="grouped_gemm/cublaslt_per_expert/gate_up_T16384_E16",
              peer="cuBLASLt FP8 per expert (per-tensor scales)")
COPY = [dict(source="llama4-kernels", family="copy", variant="dtod", shape="256MiB", bytes=2 << 28, us=130.0,
             gbps=4130.0, device=DEVICE),
        dict(source="llama4-kernels", family="copy", variant="dtod", shape="256MiB", bytes=2 << 28, us=128.0,
             gbps=4194.3, device=DEVICE)]
TORCH = [dict(source="torch", peer="torch eager", family="rmsnorm", variant="plain", shape="16384x5120",
              us=140.0, us_min=138.0, us_max=150.0),
         dict(source="torch", peer="torch.compile", family="rmsnorm", variant="plain", shape="16384x5120",
              us=95.0, us_min=94.0, us_max=97.0),
         dict(source="torch", peer="torch._scaled_grouped_mm", family="grouped_gemm", variant="auto",
              shape="gate_up_T16384_E16", us=2973.0, us_min=2960.0, us_max=2990.0),
         dict(source="torch", peer="torch copy_", family="copy", variant="torch", shape="1GiB", bytes=1 << 31,
              us=500.0)]
CRITERION = {**criterion_files(RMS["id"], slope=(90_000.0, 89_000.0, 91_500.0), mean=(95_000.0, 94_000.0, 96_000.0)),
             # Sampled flat: criterion prints the mean.
             **criterion_files(GEMM["id"], mean=(2_500_000.0, 2_480_000.0, 2_530_000.0)),
             **criterion_files(CUBLAS["id"], slope=(2_400_000.0, 2_390_000.0, 2_410_000.0))}


def read(path):
    with open(path) as f:
        return f.read()


class Folder:
    """A run folder in a temporary directory, removed when `test` ends."""

    def __init__(self, test):
        tmp = tempfile.TemporaryDirectory()
        test.addCleanup(tmp.cleanup)
        self.path = tmp.name

    def file(self, name):
        return os.path.join(self.path, name)

    def kernels(self):
        tar_xz(self.file("criterion.tar.xz"), CRITERION)
        jsonl(self.file("ours.jsonl"), COPY[:1] + [RMS, GEMM, CUBLAS] + COPY[1:])
        jsonl(self.file("peers.jsonl"), TORCH)
        return self


def rows(path):
    got, info = report.rows_of(report.Run(path))
    return {r.id: r for r in got}, info


class KernelRows(unittest.TestCase):
    def setUp(self):
        self.run = Folder(self).kernels()
        self.rows, self.info = rows(self.run.path)

    def test_rows_are_criterion_estimates_joined_to_their_records(self):
        self.assertEqual(list(self.rows), [RMS["id"], GEMM["id"]], "the vendor peer is a peer, not a row")
        r = self.rows[RMS["id"]].ours
        self.assertEqual((r.ns, r.lo, r.hi), (90_000.0, 89_000.0, 91_500.0), "the slope when criterion has one")
        g = self.rows[GEMM["id"]].ours
        self.assertEqual((g.ns, g.lo, g.hi), (2_500_000.0, 2_480_000.0, 2_530_000.0), "else the mean")

    def test_the_copy_ceiling_is_the_best_of_ours_in_the_run(self):
        self.assertEqual(self.info["copy"], 4194.3)
        self.assertEqual(self.rows[RMS["id"]].copy_gbps, 4194.3)

    def test_the_best_peer_of_the_same_run_with_its_spread(self):
        best = self.rows[RMS["id"]].best
        self.assertEqual((best.name, best.ns, best.lo, best.hi), ("torch.compile", 95_000.0, 94_000.0, 97_000.0))
        # cuBLASLt through criterion (2.40 ms) beats _scaled_grouped_mm (2.97 ms).
        best = self.rows[GEMM["id"]].best
        self.assertEqual((best.name, best.ns), (CUBLAS["peer"], 2_400_000.0))
        self.assertEqual(len(self.rows[GEMM["id"]].peers), 2)

    def test_each_row_is_held_to_the_ceiling_that_bounds_it(self):
        t, which = self.rows[RMS["id"]].limit()
        self.assertEqual(which, "copy")
        self.assertAlmostEqual(t, RMS["bytes"] / 4194.3e9)
        t, which = self.rows[GEMM["id"]].limit()
        self.assertEqual(which, "fp8")
        self.assertAlmostEqual(t, GEMM["flops"] / 1978.9e12)

    def test_the_table_prints_figures_ratios_and_fractions(self):
        lines = report.table(list(self.rows.values()))
        rms = next(line for line in lines if line.startswith("| rmsnorm/plain"))
        cells = [c.strip() for c in rms.split("|")[1:-1]]
        self.assertEqual(cells[:6], ["rmsnorm/plain", "16384x5120", "90.00 us [89.00, 91.50]", "torch.compile",
                                     "95.00 us [94.00, 97.00]", "1.06x"])
        s = 90e-6
        self.assertEqual(cells[6:], ["copy", f"{RMS['bytes'] / s / 1e9:.0f}", "",
                                     f"{100 * RMS['bytes'] / 4194.3e9 / s:.0f}%"])
        gemm = next(line for line in lines if line.startswith("| grouped_gemm/auto"))
        cells = [c.strip() for c in gemm.split("|")[1:-1]]
        self.assertEqual(cells[2], "2.50 ms [2.48, 2.53]")
        self.assertEqual(cells[5:7], ["0.96x", "fp8"])
        self.assertEqual(cells[8:], [f"{GEMM['flops'] / 2.5e-3 / 1e12:.0f}",
                                     f"{100 * GEMM['flops'] / 1978.9e12 / 2.5e-3:.0f}%"])

    def test_a_packed_folder_reads_as_the_folder(self):
        packed = Folder(self)
        with tarfile.open(packed.file("results.tar.xz"), "w:xz") as t:
            for name in os.listdir(self.run.path):
                t.add(os.path.join(self.run.path, name), "./" + name)
        got, _ = rows(packed.path)
        self.assertEqual({k: (r.ours, r.best) for k, r in got.items()},
                         {k: (r.ours, r.best) for k, r in self.rows.items()})

    def test_a_local_criterion_folder_serves_as_well(self):
        local = Folder(self)
        for name, text in CRITERION.items():
            os.makedirs(os.path.dirname(local.file("criterion/" + name)), exist_ok=True)
            with open(local.file("criterion/" + name), "w") as f:
                f.write(text)
        jsonl(local.file("ours.jsonl"), [RMS])
        got, _ = rows(local.path)
        self.assertEqual(list(got), [RMS["id"]])
        self.assertEqual(got[RMS["id"]].ours.ns, 90_000.0)


LOG = """\
rmsnorm/plain/16384x5120
                        time:   [89.012 µs 90.000 µs 91.500 µs]
                        thrpt:  [3.4153 TiB/s 3.4723 TiB/s 3.5108 TiB/s]
rmsnorm/plain/16384x5120: 335554560 bytes per call; copy ceiling 4194 GB/s
Found 1 outliers among 10 measurements (10.00%)
  1 (10.00%) high mild
Benchmarking grouped_gemm/auto/gate_up_T16384_E16: Warming up for 300.00 ms
grouped_gemm/auto/gate_up_T16384_E16
                        time:   [2.4800 ms 2.5000 ms 2.5300 ms]
decode b64 ctx1024: KV needs 20132659200 bytes, 19353698304 free: skipped
scout-meta/prefill/8192 time:   [407.11 ms 410.07 ms 413.21 ms]
"""


class CriterionLog(unittest.TestCase):
    def test_printed_estimates_when_no_json_came_back(self):
        got = report.criterion_log_estimates(LOG, "log")
        self.assertEqual(list(got), [RMS["id"], GEMM["id"], "scout-meta/prefill/8192"])
        self.assertAlmostEqual(got[RMS["id"]].ns, 90_000.0)
        self.assertAlmostEqual(got[RMS["id"]].lo, 89_012.0)
        self.assertAlmostEqual(got[GEMM["id"]].hi, 2_530_000.0)
        self.assertAlmostEqual(got["scout-meta/prefill/8192"].ns, 410.07e6)

    def test_json_wins_over_the_log(self):
        run = Folder(self).kernels()
        with open(run.file("bench.log"), "w") as f:
            f.write(LOG.replace("90.000 µs", "70.000 µs"))
        got, info = rows(run.path)
        self.assertEqual(got[RMS["id"]].ours.ns, 90_000.0)
        self.assertEqual(info["sources"], ["criterion JSON"])


MODEL = dict(source="llama4-kernels", id="scout-meta/decode/b1/ctx8192", model="scout", layers=48,
             recipe="meta", case="decode", batch=1, context=8192, bytes=26_700_000_000,
             flops=2 * 17_000_000_000 + 10 ** 9, fp8_flops=2 * 1_000_000_000, device=DEVICE)
PEER = dict(peer="torch", model="scout", recipe="meta", case="decode", batch=1, context=8192, ms=14.64,
            ms_min=14.60, ms_max=14.70, device="NVIDIA H200")


class ModelRows(unittest.TestCase):
    def test_bench_model_records_pair_with_torch_scout(self):
        run = Folder(self)
        tar_xz(run.file("criterion.tar.xz"), criterion_files(MODEL["id"], slope=(9.42e6, 9.40e6, 9.43e6)))
        jsonl(run.file("ours.jsonl"), [dict(source="llama4-kernels", family="copy", variant="model", gbps=4161.3),
                                       MODEL])
        jsonl(run.file("scout-peer.jsonl"), [PEER, dict(PEER, context=1024, ms=14.0)])
        got, _ = rows(run.path)
        r = got[MODEL["id"]]
        self.assertEqual((r.op, r.shape), ("scout (meta)", "decode/b1/ctx8192"))
        self.assertEqual((r.best.ns, r.best.lo, r.best.hi), (14.64e6, 14.60e6, 14.70e6))
        t, which = r.limit()
        self.assertEqual(which, "copy")
        self.assertAlmostEqual(t, MODEL["bytes"] / 4161.3e9)

    def test_older_runs_take_the_case_from_llama4_bench(self):
        run = Folder(self)
        with open(run.file("bench-model.log"), "w") as f:
            f.write("scout-meta/decode/b1/ctx8192\n                        time:   [9.3972 ms 9.4274 ms 9.4430 ms]\n")
        old = dict(ours="llama4-kernels", model="scout", layers=48, recipe="meta", overlap=True, device=DEVICE,
                   copy_gbps=4161.3, case="decode", batch=1, context=8192, ms=9.438, read_bytes=26_690_000_000)
        jsonl(run.file("scout-ours.jsonl"), [old, dict(old, overlap=False, ms=10.75)])
        jsonl(run.file("scout-peer.jsonl"), [dict(PEER, ms=14.676)])
        got, info = rows(run.path)
        r = got[MODEL["id"]]
        self.assertAlmostEqual(r.ours.ns, 9.4274e6, msg="criterion's figure, not llama4-bench's median")
        self.assertEqual((r.bytes, r.flops, r.copy_gbps), (26_690_000_000, 0, 4161.3))
        self.assertAlmostEqual(r.best.ns, 14.676e6)
        self.assertEqual(info["sources"], ["criterion's output in bench-model.log"])


class Output(unittest.TestCase):
    def test_out_rewrites_only_the_generated_section(self):
        run = Folder(self).kernels()
        md = run.file("RESULTS.md")
        with open(md, "w") as f:
            f.write(f"# Results\n\nkept above\n\n{report.BEGIN}\nold table\n{report.END}\n\nkept below\n")
        report.main(["--run", run.path, "--out", md])
        report.main(["--run", run.path, "--out", md])
        text = read(md)
        self.assertTrue(text.startswith("# Results\n\nkept above\n\n" + report.BEGIN))
        self.assertTrue(text.endswith(report.END + "\n\nkept below\n"))
        self.assertNotIn("old table", text)
        self.assertEqual(text.count(report.BEGIN), 1)
        self.assertIn("| rmsnorm/plain | 16384x5120 | 90.00 us", text)

    def test_a_file_without_the_markers_is_refused(self):
        run = Folder(self).kernels()
        md = run.file("notes.md")
        with open(md, "w") as f:
            f.write("# hand-written\n")
        with self.assertRaises(SystemExit):
            report.main(["--run", run.path, "--out", md])
        self.assertEqual(read(md), "# hand-written\n")

    def test_a_run_without_estimates_is_an_error(self):
        run = Folder(self)
        jsonl(run.file("ours.jsonl"), [RMS])
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            report.main(["--run", run.path])

    @unittest.skipUnless(__import__("importlib").util.find_spec("matplotlib"), "needs matplotlib")
    def test_the_plot_is_a_png_linked_from_the_section(self):
        run = Folder(self).kernels()
        md, png = run.file("RESULTS.md"), run.file("results/roofline.png")
        os.makedirs(os.path.dirname(png))
        report.main(["--run", run.path, "--out", md, "--plot", png])
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertIn("](results/roofline.png)", read(md))


if __name__ == "__main__":
    unittest.main()
