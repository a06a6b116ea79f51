"""A GPU stand-in for the benches on a machine without one (bench only, never the product).

With ``CORRAL_BENCH_PACED_GPU=h200`` in the environment and this folder on PYTHONPATH,
every Python process that starts (the bench, uvicorn, the Celery worker) makes each
``llama_decode`` of llama-cpp-python last at least as long as that batch took on an
NVIDIA H200 (the GPU kit's ``batch_bench.py``: the kit's random 269M llama, every layer
offloaded, B=1 1045 tok/s, 4: 2404, 8: 3817, 16: 5312, 32: 6257), plus 0.01 ms for each
prompt token that asks for no logits (a prompt of 30 tokens then takes about 1.3 ms before
its first token: the kit's raw TTFT on the H200 was 2.2–5 ms). Run with a tiny model
(``make_model.py --n-embd 64 --n-layer 1``), whose own decode takes a fraction of that:
the decode thread then sleeps, with the GIL released, for about the time it would wait on
the GPU, while the CPU is free for the rest of the stack, as on a GPU machine.

It is a stand-in: the kernel time of a batch is modelled from its token counts alone (not
its attention span), and the wait sits inside ``llama_decode``, where a real CUDA build
returns at once and waits when the logits are read, so Python's work between the two does
not overlap the GPU's here. Both make the stand-in slower than the GPU, not faster.
"""

from __future__ import annotations

import os
import time

# Sequences stepping in a batch (one token each) -> milliseconds a decode took on the H200
# (batch_bench.py, 128 tokens a sequence); linear between the points, and past the last
# with the last slope.
H200_STEP_MS = ((1, 0.957), (4, 1.664), (8, 2.096), (16, 3.012), (32, 5.114))
H200_PROMPT_TOKEN_MS = 0.01
PROFILES = {"h200": (H200_STEP_MS, H200_PROMPT_TOKEN_MS)}


def step_seconds(tokens: int, points: tuple[tuple[int, float], ...] = H200_STEP_MS) -> float:
    """How long a decode step of ``tokens`` sequences took on the modelled GPU."""
    tokens = max(tokens, 1)
    for (n0, ms0), (n1, ms1) in zip(points, points[1:], strict=False):
        if tokens <= n1:
            return (ms0 + (ms1 - ms0) * (tokens - n0) / (n1 - n0)) / 1000
    (n0, ms0), (n1, ms1) = points[-2], points[-1]
    return (ms1 + (ms1 - ms0) * (tokens - n1) / (n1 - n0)) / 1000


def install(profile: str) -> None:
    """Pace ``llama_decode`` in this process (both names llama-cpp-python calls it by)."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    points, prompt_token_ms = PROFILES[profile]
    real_decode = bindings.llama_decode

    def paced_decode(ctx, batch):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        status = real_decode(ctx, batch)
        tokens = batch.n_tokens
        # Tokens that want logits are the sequences stepping (a null array: the last only).
        outputs = sum(batch.logits[:tokens]) if batch.logits else 1
        wanted = step_seconds(outputs, points) + (tokens - outputs) * prompt_token_ms / 1000
        left = wanted - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        return status

    bindings.llama_decode = paced_decode
    llama_cpp.llama_decode = paced_decode


if os.environ.get("CORRAL_BENCH_PACED_GPU"):
    install(os.environ["CORRAL_BENCH_PACED_GPU"])
