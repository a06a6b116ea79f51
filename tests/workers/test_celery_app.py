"""The worker process's setup, as `celery -A workers.celery_app worker` imports it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT_SPIN = "import os, workers.celery_app; print(os.environ['GOMP_SPINCOUNT'])"


@pytest.mark.parametrize(("given", "used"), [(None, "2000"), ("300000", "300000")])
def test_llama_cpp_threads_spin_briefly_unless_the_operator_says(given, used):
    """llama.cpp's OpenMP threads stop spinning soon after a step (they would hold a core
    the sampling threads need); an operator's own GOMP_SPINCOUNT is kept."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    out = subprocess.run(
        [sys.executable, "-c", PRINT_SPIN], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == used
