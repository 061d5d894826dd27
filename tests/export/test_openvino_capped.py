"""OpenVINO under a capped oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``, what the docs suggest for
seeing an AVX2-only CPU on a newer one).

OpenVINO 2026.4.1 crashed with SIGSEGV in ``infer`` there (AMD EPYC Zen 5, after PyTorch had
built and exported the model in the same process): the runtime now compiles OpenVINO's model
without the cap. Run in a child process, so that a crash fails this test, not the suite. On a
CPU whose ISA the cap does not lower, the test passes either way.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("openvino")


def test_benchmark_with_openvino_runs_under_a_capped_onednn():
    cmd = [sys.executable, "-m", "detgn", "benchmark", "--config", "synthetic/demo_gn_scratch.yaml", "--task",
           "inference", "--backend", "openvino", "--height", "96", "--width", "128", "--iters", "1", "--warmup", "0",
           "CPU.NUM_THREADS", "1"]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert '"backend": "openvino"' in r.stdout and '"matches_fp32": true' in r.stdout, r.stdout[-2000:]
    assert "OpenVINO runs without ONEDNN_MAX_CPU_ISA=AVX2" in r.stderr + r.stdout
