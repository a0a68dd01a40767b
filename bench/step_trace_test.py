"""Tests of bench/trace/step_trace.py on small hand-made traces (CPU only; .ci/run runs them):
python3 -m unittest discover -s bench -p '*_test.py'"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace"))
import step_trace  # noqa: E402

HEADER = "start,end,stream,graph,node,correlation,grid_x,grid_y,grid_z,block_x,name\n"
NORM = "_ZN3l4k14rmsnorm_kernelILi8ELi4ELb1EEEv16L4kRmsnormParams"
GEMV = "_ZN3l4k4gemv11gemv_kernelILi8EEEvv"


def kernel(start, end, stream, graph, corr, name, grid=1):
    return f"{start},{end},{stream},{graph},1,{corr},{grid},1,1,256,{name}\n"


class StepTraceTest(unittest.TestCase):
    def test_short_names(self):
        self.assertEqual(step_trace.short_name(NORM), "l4k::rmsnorm_kernel")
        self.assertEqual(step_trace.short_name(GEMV), "l4k::gemv::gemv_kernel")
        self.assertEqual(step_trace.short_name("sm90_xmma_gemm_bf16bf16_bf16f32"), "sm90_xmma_gemm_bf16bf16_bf16f32")

    def test_marginals_sum_to_the_span_and_count_idle_once(self):
        # Overlapping (PDL) kernels, then a 3 ns gap before the last one.
        ks = [{"start": s, "end": e, "stream": 7} for s, e in [(0, 10), (5, 12), (15, 20)]]
        rows = step_trace.marginals(ks)[7]
        self.assertEqual([m for _, m, _ in rows], [10, 2, 8])
        self.assertEqual([i for _, _, i in rows], [0, 0, 3])
        self.assertEqual(sum(m for _, m, _ in rows), 20)

    def test_the_step_is_the_graph_replayed_most_and_its_median_replay(self):
        lines = [HEADER]
        # Graph 2 replayed three times (spans 20, 40, 30 ns), graph 3 once, one kernel outside graphs.
        for corr, (t, span) in enumerate([(0, 20), (100, 40), (200, 30)], start=50):
            lines.append(kernel(t, t + 10, 7, 2, corr, NORM))
            lines.append(kernel(t + 5, t + span, 7, 2, corr, GEMV, grid=448))
        lines.append(kernel(300, 400, 7, 3, 90, NORM))
        lines.append(kernel(500, 510, 7, 0, 91, NORM))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.csv")
            with open(path, "w") as f:
                f.writelines(lines)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                self.assertEqual(step_trace.main([path, "--json", os.path.join(d, "r.json")]), 0)
            with open(os.path.join(d, "r.json")) as f:
                report = json.load(f)
        self.assertEqual((report["graph"], report["replays"]), (2, 3))
        self.assertAlmostEqual(report["span_us"], 0.030)
        gemv = report["streams"]["7"]["l4k::gemv::gemv_kernel"]
        self.assertAlmostEqual(gemv["marginal_us"], 0.020)
        self.assertIn("graph 2: 3 replays of 2 kernels", out.getvalue())


if __name__ == "__main__":
    unittest.main()
