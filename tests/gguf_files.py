"""Tiny GGUF files written with the ``gguf`` package, for fast tests of loading,
validation and metadata (random weights: they load and generate, they say nothing)."""

from __future__ import annotations

import struct
from pathlib import Path


def write_tiny_llama(path: Path, chat_template: str | None = None) -> Path:
    """A one-layer llama with a 29-token vocabulary and float32 random weights."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(97, 123)]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [1] * 26)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    rng = np.random.default_rng(0)
    vocab, dim = len(tokens), 8
    tensors = {
        "token_embd.weight": (vocab, dim),
        "output_norm.weight": (dim,),
        "output.weight": (vocab, dim),
        "blk.0.attn_norm.weight": (dim,),
        "blk.0.attn_q.weight": (dim, dim),
        "blk.0.attn_k.weight": (dim, dim),
        "blk.0.attn_v.weight": (dim, dim),
        "blk.0.attn_output.weight": (dim, dim),
        "blk.0.ffn_norm.weight": (dim,),
        "blk.0.ffn_gate.weight": (16, dim),
        "blk.0.ffn_up.weight": (16, dim),
        "blk.0.ffn_down.weight": (dim, 16),
    }
    for name, shape in tensors.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Embeddings and output, three norms, attention, feed-forward.
TINY_LLAMA_PARAMETERS = 29 * 8 * 2 + 8 * 3 + 8 * 8 * 4 + 16 * 8 * 3


def write_wrong_magic(path: Path) -> Path:
    path.write_bytes(b"NOPE" + b"\0" * 60)
    return path


def write_truncated(path: Path, source: Path) -> Path:
    """The first half of a real GGUF's header."""
    data = source.read_bytes()
    path.write_bytes(data[: min(len(data) // 2, 600)])
    return path


def write_huge_declared_array(path: Path) -> Path:
    """A header whose one key holds an array of 2**33 32-bit integers (32 GiB), in a file
    of a few bytes: a reader that believes it runs out of memory or time."""
    key = b"general.tags"
    path.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)  # version 3, no tensors, one key
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", 9)  # an array...
        + struct.pack("<IQ", 5, 2**33)  # ...of int32, 2**33 of them
        + b"\0" * 32
    )
    return path
