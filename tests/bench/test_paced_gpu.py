"""The benches' GPU stand-in (bench/paced_gpu): each decode lasts as long as the modelled
GPU's, in every Python process started with it on PYTHONPATH."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gguf_files import write_tiny_llama

SITE = Path(__file__).resolve().parents[2] / "bench" / "paced_gpu"


def paced_gpu_module():
    spec = importlib.util.spec_from_file_location("paced_gpu_site", SITE / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the environment variable is unset here: no install
    return module


def test_step_times_follow_the_measured_points_and_go_on_past_them():
    paced = paced_gpu_module()
    for tokens, ms in paced.H200_STEP_MS:
        assert paced.step_seconds(tokens) == pytest.approx(ms / 1000)
    assert paced.step_seconds(2) == pytest.approx((0.957 + (1.664 - 0.957) / 3) / 1000)
    slope = (5.114 - 3.012) / 16
    assert paced.step_seconds(64) == pytest.approx((5.114 + 32 * slope) / 1000)


DECODES = """
import json, sys, time
import llama_cpp
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
took = []
for token in [1] * 20:
    llm.reset()
    started = time.perf_counter()
    llm.eval([token])
    took.append(time.perf_counter() - started)
print(json.dumps({"paced": llama_cpp.llama_decode.__name__ == "paced_decode", "took": took}))
"""


@pytest.mark.parametrize("profile", ["h200", ""])
def test_a_process_started_with_it_decodes_at_the_modelled_gpu_speed(tmp_path, profile):
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    env = {**os.environ, "PYTHONPATH": str(SITE), "CORRAL_BENCH_PACED_GPU": profile}
    out = subprocess.run(
        [sys.executable, "-c", DECODES, str(model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["paced"] is bool(profile)
    if profile:  # one token alone: at least the H200's 0.957 ms
        assert min(figures["took"]) >= 0.000957
