"""Tiny Hugging Face model folders written by the tests (config.json, safetensors weights and a
``tokenizers`` tokenizer), for converting to GGUF. Random weights: they load and generate, they
say nothing. A byte-level BPE trained in memory on a few sentences stands in for a real one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Enough text for a few hundred merges; the words repeat so the merges are deterministic.
TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. Hello world, hello there: a tiny model says hello.
Llamas live in the mountains of South America; they carry loads and eat grass all day long.
In 1997 a computer beat the world chess champion, and in 2016 another one learned to play go.
Tokenizers split text into pieces: words, parts of words, digits, spaces and punctuation marks!
What's the weather like today? It's sunny, warm and bright, with a light breeze from the sea.
She said they'll meet at 10:30 near the old library, where the books smell of dust and ink.
Tag #llamas and #llamas, ask @alice or @alice (hello) "quoted": 1234567890 and 1234567890.
"""

# The tokenizer's own special tokens, ids 0 and 1 as in Llama.
SPECIAL_TOKENS = ("<s>", "</s>")

# Llama 3's pre-tokenizer regex (its tokenizer.json's Split step).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def write_tiny_hf_llama(
    folder: Path,
    *,
    vocab_size: int = 384,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    dtype: str = "float32",
    tie_word_embeddings: bool = False,
    pre_tokenizer: str = "gpt-2",
) -> Path:
    """A Llama folder as ``save_pretrained`` writes it. ``vocab_size`` is the embedding's rows;
    the tokenizer has a few ids fewer, so the converter's padding is exercised.

    ``dtype`` is "float32" or "bfloat16"; ``pre_tokenizer`` "gpt-2" (a plain ByteLevel step) or
    "llama-bpe" (Llama 3's regex split, then ByteLevel without its own regex)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_size = write_byte_level_tokenizer(folder, vocab_size - 8, pre_tokenizer)
    assert tokenizer_size <= vocab_size
    head_dim = hidden_size // heads
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": dtype,
    }
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", {"bos_token_id": 0, "eos_token_id": 1})
    tensors = _random_llama_tensors(
        vocab_size, hidden_size, layers, heads * head_dim, kv_heads * head_dim, intermediate, seed
    )
    if tie_word_embeddings:
        del tensors["lm_head.weight"]
    save_weights(folder / "model.safetensors", tensors, dtype)
    return folder


def write_byte_level_tokenizer(folder: Path, target_size: int, pre_tokenizer: str = "gpt-2") -> int:
    """tokenizer.json and tokenizer_config.json; returns the tokenizer's vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if pre_tokenizer == "gpt-2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif pre_tokenizer == "llama-bpe":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(f"unknown pre-tokenizer {pre_tokenizer!r}")
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=target_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TRAINING_TEXT] * 4, trainer)  # newlines included
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(
        folder / "tokenizer_config.json",
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "add_bos_token": True,
            "add_eos_token": False,
            "chat_template": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
        },
    )
    return int(tokenizer.get_vocab_size(with_added_tokens=True))


def save_weights(path: Path, tensors: dict[str, Any], dtype: str = "float32") -> None:
    """safetensors with ``safetensors.numpy``; bfloat16 (which numpy lacks) by writing the
    format by hand: an 8-byte header length, a JSON header, then the raw data."""
    import numpy as np
    from safetensors.numpy import save_file

    if dtype == "float32":
        save_file({name: np.ascontiguousarray(t, np.float32) for name, t in tensors.items()}, path)
        return
    if dtype != "bfloat16":
        raise ValueError(f"unknown dtype {dtype!r}")
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        # bfloat16 is float32's top half (truncating, which is fine for random weights).
        blob = (np.ascontiguousarray(tensor, np.float32).view(np.uint32) >> 16).astype("<u2")
        data = blob.tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as file:
        file.write(len(header_bytes).to_bytes(8, "little"))
        file.write(header_bytes)
        for data in blobs:
            file.write(data)


def read_weights(folder: Path) -> dict[str, Any]:
    """The float32 weights of a folder this module wrote (either dtype), by Hugging Face name."""
    import numpy as np

    path = folder / "model.safetensors"
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    data = path.read_bytes()[8 + header_length :]
    weights = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        if entry["dtype"] == "F32":
            array = np.frombuffer(data[start:end], "<f4")
        else:
            array = (np.frombuffer(data[start:end], "<u2").astype(np.uint32) << 16).view(np.float32)
        weights[name] = array.reshape(entry["shape"])
    return weights


def write_bert_config(folder: Path) -> Path:
    """A folder whose config.json names an architecture the converter does not convert."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", {"architectures": ["BertModel"], "hidden_size": 64})
    return folder


def remove_tensor(folder: Path, name: str) -> Path:
    """Rewrite the folder's weights without one tensor (a truncated or mismatched checkpoint)."""
    tensors = read_weights(folder)
    del tensors[name]
    save_weights(folder / "model.safetensors", tensors)
    return folder


def shard_weights(folder: Path) -> Path:
    """Split model.safetensors into two shards and an index, as large models are stored."""
    tensors = read_weights(folder)
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, shard_names in shards.items():
        save_weights(folder / file, {name: tensors[name] for name in shard_names})
    weight_map = {name: file for file, shard_names in shards.items() for name in shard_names}
    _write_json(folder / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    (folder / "model.safetensors").unlink()
    return folder


def edit_json(path: Path, **changes: Any) -> None:
    """Overwrite top-level fields of a JSON file in the folder (config.json, tokenizer.json)."""
    value = json.loads(path.read_text(encoding="utf-8"))
    _write_json(path, value | changes)


def reference_logits(folder: Path, token_ids: list[int]) -> Any:
    """Hugging Face's Llama forward pass in numpy (float64): every position's logits. Its rotary
    embedding rotates each head's two halves, as transformers does, so a GGUF written without
    llama.cpp's Q/K permutation disagrees from the second token on."""
    import numpy as np

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = read_weights(folder)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads
    count = len(token_ids)

    def rms_norm(x: Any, weight: Any) -> Any:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + config["rms_norm_eps"]) * weight

    frequencies = 1.0 / config["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
    angles = np.arange(count)[:, None] * frequencies[None, :]
    angles = np.concatenate([angles, angles], axis=-1)[:, None, :]  # (position, head, dim)

    def rope(x: Any) -> Any:
        halves = np.concatenate([-x[..., head_dim // 2 :], x[..., : head_dim // 2]], axis=-1)
        return x * np.cos(angles) + halves * np.sin(angles)

    causal = np.triu(np.full((count, count), -np.inf), 1)
    x = weights["model.embed_tokens.weight"][token_ids].astype(np.float64)
    for i in range(config["num_hidden_layers"]):
        w = {name.removeprefix(f"model.layers.{i}."): t for name, t in weights.items()}
        h = rms_norm(x, w["input_layernorm.weight"])
        q = rope((h @ w["self_attn.q_proj.weight"].T).reshape(count, heads, head_dim))
        k = rope((h @ w["self_attn.k_proj.weight"].T).reshape(count, kv_heads, head_dim))
        v = (h @ w["self_attn.v_proj.weight"].T).reshape(count, kv_heads, head_dim)
        k, v = k.repeat(heads // kv_heads, axis=1), v.repeat(heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + causal
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attention = np.einsum("hqk,khd->qhd", scores, v).reshape(count, heads * head_dim)
        x = x + attention @ w["self_attn.o_proj.weight"].T
        h = rms_norm(x, w["post_attention_layernorm.weight"])
        gate = h @ w["mlp.gate_proj.weight"].T
        up = h @ w["mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w["mlp.down_proj.weight"].T
    output = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    return rms_norm(x, weights["model.norm.weight"]) @ output.T


def _random_llama_tensors(
    vocab: int, hidden: int, layers: int, q_rows: int, kv_rows: int, intermediate: int, seed: int
) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)

    # Large enough a spread that the logits differ clearly between tokens.
    def matrix(rows: int, columns: int) -> Any:
        return rng.normal(0.0, 0.5 / columns**0.5, (rows, columns)).astype(np.float32)

    def norm() -> Any:
        return (1.0 + rng.normal(0.0, 0.1, hidden)).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": rng.normal(0.0, 1.0, (vocab, hidden)).astype(np.float32),
        "model.norm.weight": norm(),
        "lm_head.weight": matrix(vocab, hidden) * 4,
    }
    for i in range(layers):
        prefix = f"model.layers.{i}"
        tensors |= {
            f"{prefix}.input_layernorm.weight": norm(),
            f"{prefix}.self_attn.q_proj.weight": matrix(q_rows, hidden) * 4,
            f"{prefix}.self_attn.k_proj.weight": matrix(kv_rows, hidden) * 4,
            f"{prefix}.self_attn.v_proj.weight": matrix(kv_rows, hidden),
            f"{prefix}.self_attn.o_proj.weight": matrix(hidden, q_rows),
            f"{prefix}.post_attention_layernorm.weight": norm(),
            f"{prefix}.mlp.gate_proj.weight": matrix(intermediate, hidden),
            f"{prefix}.mlp.up_proj.weight": matrix(intermediate, hidden),
            f"{prefix}.mlp.down_proj.weight": matrix(hidden, intermediate),
        }
    return tensors


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def tiny_llama_gguf(folder: Path, name: str, *, seed: int = 0) -> Path:
    """``folder/name``: a tiny random Llama (real byte-level tokenizer, chat template)
    written as Hugging Face files beside it and converted to an F16 GGUF."""
    from inference.hf_convert import convert_hf_llama

    source = write_tiny_hf_llama(folder / f"{name}-hf", seed=seed)
    return convert_hf_llama(source, folder / name).path
