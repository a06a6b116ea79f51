"""What a GGUF file says about itself, read from its header with the ``gguf`` package.

A file from an upload or a folder is untrusted: a crafted header can declare arrays of
billions of entries. So :func:`inspect_gguf` reads it in a child process with limits on
memory, CPU time and wall time, and a bad file gives :class:`InvalidGguf` ("not a valid
GGUF: <reason>") instead of a stuck or exhausted server. ``python -m inference.gguf_info
FILE`` is that child: it prints the facts as JSON.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# The reader maps the file (which these limits do not count) and builds every header
# field in memory: Gemma 3's 262k-token vocabulary took 750 MB and a few seconds here.
MEMORY_LIMIT_BYTES = 2 * 1024**3
CPU_LIMIT_S = 60
WALL_LIMIT_S = 90


# Whether the child ran out of memory (MemoryError) or was stopped by a limit.
TOO_BIG = "its header asks for more memory or time than a header needs"


class InvalidGguf(ValueError):
    """The file cannot be used as a model; the message says why, for the admin."""


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    name: str
    parameters: int  # weights, summed over the tensors
    quantization: str  # llama.cpp's file type, e.g. "Q4_K_M"
    context_length: int | None
    has_chat_template: bool
    size_bytes: int


def read_gguf_info(path: Path) -> GgufInfo:
    """In this process: only for files already trusted (or in the child)."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)

    def value(key: str) -> object:
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    architecture = str(value("general.architecture") or "")
    if not architecture:
        raise InvalidGguf("not a valid GGUF: it names no architecture")
    file_type = value("general.file_type")
    try:
        quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")  # type: ignore[call-overload]
    except (TypeError, ValueError):
        quantization = "unknown"
    context = value(f"{architecture}.context_length")
    return GgufInfo(
        architecture=architecture,
        name=str(value("general.name") or ""),
        parameters=sum(int(tensor.n_elements) for tensor in reader.tensors),
        quantization=quantization,
        context_length=int(context) if isinstance(context, int) else None,
        has_chat_template=bool(value("tokenizer.chat_template")),
        size_bytes=path.stat().st_size,
    )


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))


def inspect_gguf(path: Path) -> GgufInfo:
    """Read ``path``'s header in a limited child process; raise :class:`InvalidGguf`."""
    if not path.is_file():
        raise InvalidGguf("not a valid GGUF: no such file")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "inference.gguf_info", str(path)],
            capture_output=True,
            text=True,
            timeout=WALL_LIMIT_S,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        raise InvalidGguf("not a valid GGUF: reading its header took too long") from None
    try:
        reply = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        if done.returncode < 0 or "MemoryError" in done.stderr:
            raise InvalidGguf(f"not a valid GGUF: {TOO_BIG}") from None
        raise InvalidGguf("not a valid GGUF: its header could not be read") from None
    if "error" in reply:
        raise InvalidGguf(f"not a valid GGUF: {reply['error']}")
    return GgufInfo(**reply)


def _main(argv: list[str]) -> int:
    # The child limits itself before it reads anything (preexec_fn is not safe in a
    # threaded parent such as the web server).
    _limit_child()
    try:
        info = read_gguf_info(Path(argv[1]))
    except InvalidGguf as exc:
        print(json.dumps({"error": str(exc).removeprefix("not a valid GGUF: ")}))
    except MemoryError:
        print(json.dumps({"error": TOO_BIG}))
    except Exception as exc:  # the reader's own words, after ours
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        if "magic" in detail.lower():
            reason = "wrong magic: this is not a GGUF file"
        else:
            reason = "its header is truncated or malformed" + (f" ({detail})" if detail else "")
        print(json.dumps({"error": reason}))
    else:
        print(json.dumps(asdict(info)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
