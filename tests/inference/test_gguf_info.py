"""Reading what a GGUF says about itself, in a limited child process: good files give
their facts, bad ones a clear "not a valid GGUF: <reason>", and none hangs or exhausts the
process that asked."""

from __future__ import annotations

import time

import pytest

from inference.gguf_info import GgufInfo, InvalidGguf, inspect_gguf
from tests.gguf_files import (
    TINY_LLAMA_PARAMETERS,
    write_huge_declared_array,
    write_tiny_llama,
    write_truncated,
    write_wrong_magic,
)


def test_a_gguf_tells_its_architecture_size_quantization_and_template(tmp_path):
    path = write_tiny_llama(tmp_path / "tiny.gguf", chat_template="{{ messages }}")
    assert inspect_gguf(path) == GgufInfo(
        architecture="llama",
        name="tiny test llama",
        parameters=TINY_LLAMA_PARAMETERS,
        quantization="ALL_F32",
        context_length=64,
        has_chat_template=True,
        size_bytes=path.stat().st_size,
    )
    assert inspect_gguf(write_tiny_llama(tmp_path / "plain.gguf")).has_chat_template is False


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (write_wrong_magic, "not a valid GGUF: wrong magic: this is not a GGUF file"),
        (
            lambda path: write_truncated(path, write_tiny_llama(path.with_suffix(".src"))),
            "not a valid GGUF: its header is truncated or malformed",
        ),
        (
            write_huge_declared_array,
            "not a valid GGUF: its header asks for more memory or time than a header needs",
        ),
    ],
    ids=["wrong magic", "truncated", "huge declared array"],
)
def test_a_bad_file_is_refused_with_its_reason(tmp_path, write, reason):
    path = write(tmp_path / "bad.gguf")
    started = time.monotonic()
    with pytest.raises(InvalidGguf) as refused:
        inspect_gguf(path)
    assert str(refused.value).startswith(reason)
    assert time.monotonic() - started < 90


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(InvalidGguf, match="not a valid GGUF: no such file"):
        inspect_gguf(tmp_path / "absent.gguf")
