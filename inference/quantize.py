"""Quantizing a GGUF with llama.cpp's own quantizer (``llama_model_quantize``), and timing a
model file's generation.

llama.cpp's quantizer has no progress callback and cannot be interrupted, so it runs in a
child process (``python -m inference.quantize ...``): progress is the output file's growth
against the size the target type should give (llama.cpp writes tensor by tensor), and
cancelling kills the child. The output is written under a temporary name and renamed only
when llama.cpp reports success, so a failed or cancelled job leaves no file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# What an admin may make, and from what: k-quants from already-quantized weights lose
# quality twice, so only full-precision or Q8_0 sources are offered.
TARGET_TYPES = ("Q8_0", "Q5_K_M", "Q4_K_M")
SOURCE_TYPES = ("ALL_F32", "F32", "F16", "BF16", "Q8_0")

# Bits per weight each type stores on average (llama.cpp's quantize table): the output's
# expected size, for progress.
_BITS_PER_WEIGHT = {
    "ALL_F32": 32.0,
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q5_K_M": 5.7,
    "Q4_K_M": 4.9,
}

_POLL_S = 0.25


class QuantizeError(RuntimeError):
    """The quantizer refused or failed; the message says why."""


class QuantizeCancelled(QuantizeError):
    def __init__(self) -> None:
        super().__init__("the quantization was cancelled")


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    size_bytes: int
    seconds: float


def expected_size(source: Path, source_type: str, target_type: str) -> int:
    """Roughly how big ``source`` becomes as ``target_type``."""
    ratio = _BITS_PER_WEIGHT[target_type] / _BITS_PER_WEIGHT.get(source_type, 16.0)
    return max(1, int(source.stat().st_size * ratio))


def quantize_gguf(
    source: Path,
    destination: Path,
    target_type: str,
    *,
    source_type: str = "F16",
    threads: int = 0,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> QuantizeResult:
    """Write ``source`` quantized as ``target_type`` to ``destination`` (which must not
    exist); raise :class:`QuantizeError` or :class:`QuantizeCancelled`."""
    if target_type not in TARGET_TYPES:
        raise QuantizeError(f"cannot make {target_type}: choose one of {', '.join(TARGET_TYPES)}")
    if destination.exists():
        raise QuantizeError(f"{destination.name} exists already")
    partial = destination.with_name(f".{destination.name}.partial")
    expected = expected_size(source, source_type, target_type)
    started = time.monotonic()
    # llama.cpp logs a line per tensor: to a file, since a full pipe would stall the child.
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inference.quantize",
                str(source),
                str(partial),
                target_type,
                str(threads),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            while child.poll() is None:
                if should_stop is not None and should_stop():
                    raise QuantizeCancelled()
                if progress is not None and partial.exists():
                    progress(min(0.99, partial.stat().st_size / expected))
                time.sleep(_POLL_S)
            log.seek(0)
            output = log.read()
            reply = _last_json(output)
            if child.returncode != 0 or reply.get("error") or not partial.is_file():
                detail = reply.get("error") or _last_line(output) or f"exit {child.returncode}"
                raise QuantizeError(f"llama.cpp could not quantize {source.name}: {detail}")
            os.replace(partial, destination)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            partial.unlink(missing_ok=True)
    if progress is not None:
        progress(1.0)
    return QuantizeResult(destination, destination.stat().st_size, time.monotonic() - started)


def measure_tokens_per_second(
    path: Path, *, tokens: int = 32, threads: int = 0, chat_format: str = "", timeout: float = 300
) -> float:
    """Decode speed of ``path`` on this machine: ``tokens`` greedy tokens after a short
    prompt, in a child process (the model's memory is given back when it ends)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.quantize",
            "--measure",
            str(path),
            str(tokens),
            str(threads),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )
    reply = _last_json(done.stdout)
    if "tokens_per_second" not in reply:
        detail = reply.get("error") or _last_line(done.stderr) or f"exit code {done.returncode}"
        raise QuantizeError(f"could not time {path.name}: {detail}")
    return float(str(reply["tokens_per_second"]))


def _last_json(text: str) -> dict[str, object]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _quantize_in_this_process(source: str, destination: str, target: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{target}")
    params.nthread = threads
    params.allow_requantize = True  # Q8_0 sources are offered (nearly lossless)
    status = llama_cpp.llama_model_quantize(
        source.encode(), destination.encode(), ctypes.byref(params)
    )
    if status != 0:
        print(json.dumps({"error": f"llama_model_quantize returned {status}"}))
        return
    print(json.dumps({"ok": True}))


def _measure_in_this_process(path: str, tokens: int, threads: int) -> None:
    from llama_cpp import Llama

    llm = Llama(
        model_path=path,
        n_ctx=256,
        n_threads=threads or None,
        n_threads_batch=threads or None,
        verbose=False,
    )
    prompt = llm.tokenize(b"The lighthouse keeper looked at the storm and", add_bos=True)
    llm.eval(prompt)
    started = time.perf_counter()
    made = 0
    for _ in range(tokens):  # the end-of-text token too: this times decoding, not answers
        llm.eval([llm.sample(temp=0.0)])
        made += 1
    elapsed = time.perf_counter() - started
    print(json.dumps({"tokens_per_second": round(made / elapsed, 2) if made else 0.0}))


def _die_with_parent() -> None:
    """Linux: this child is killed when the worker that started it dies, so no orphan
    goes on writing a partial file nobody will use."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _main(argv: list[str]) -> int:
    _die_with_parent()
    try:
        if argv[1] == "--measure":
            _measure_in_this_process(argv[2], int(argv[3]), int(argv[4]))
        else:
            _quantize_in_this_process(argv[1], argv[2], argv[3], int(argv[4]))
    except Exception as exc:  # reported to the parent, which words it for the admin
        print(json.dumps({"error": str(exc).strip().splitlines()[0][:300] or type(exc).__name__}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
