"""Convert a Hugging Face Llama-family model folder (config.json, safetensors weights and a
tokenizer.json) to a GGUF file that llama.cpp loads, without torch or transformers.

What llama.cpp's ``convert_hf_to_gguf.py`` does for ``LlamaModel``, on the ``gguf`` package's
tensor-name map and writer: the same metadata, the same Q/K permutation (Hugging Face stores
rotary halves, llama.cpp's rope pairs neighbours), 2-D weights as float16 (or float32) and
norms as float32. Weights are read one tensor at a time from the safetensors files, whose
format is simple enough to read here (which also covers bfloat16, which numpy lacks), and
streamed to a temporary file renamed into place at the end: a failed or cancelled conversion
leaves nothing at the destination.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from inference.hf_vocab import UnsupportedTokenizer, add_tokenizer

Array = npt.NDArray[Any]

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32}
# safetensors dtype → how it is stored (bfloat16 as its raw 16 bits, widened when read).
STORED_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
MAX_HEADER_BYTES = 100 * 1024**2  # the format's own limit
IGNORED_TENSOR_SUFFIXES = (".rotary_emb.inv_freq",)  # recomputed by llama.cpp


class ConversionError(Exception):
    """The folder cannot be converted; the message says why, for the admin."""


class ConversionCancelled(ConversionError):
    def __init__(self) -> None:
        super().__init__("the conversion was cancelled")


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    tensor_count: int
    parameter_count: int
    size_bytes: int


@dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any]
    tie_word_embeddings: bool


@dataclass(frozen=True)
class _StoredTensor:
    path: Path
    dtype: str  # a key of STORED_DTYPES
    shape: tuple[int, ...]
    offset: int  # of its data, from the start of the file


@dataclass(frozen=True)
class _PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]
    dtype: type[np.floating[Any]]
    load: Callable[[], Array]  # float32, in the Hugging Face layout


def convert_hf_llama(
    source: Path,
    destination: Path,
    *,
    outtype: str = "f16",
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ConversionResult:
    """Write ``source``'s model to ``destination`` (replacing it), calling ``progress`` with the
    fraction of the weights written and ``should_stop`` between tensors."""
    if outtype not in FILE_TYPES:
        raise ConversionError(f"outtype must be one of {', '.join(FILE_TYPES)}, not {outtype!r}")
    config = read_llama_config(source)
    plan = _plan_tensors(config, _find_tensors(source), outtype)
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial"
    )
    os.close(descriptor)
    partial = Path(partial_name)
    writer = gguf.GGUFWriter(partial, "llama")
    try:
        _add_metadata(writer, config, source.name, FILE_TYPES[outtype])
        add_tokenizer(writer, source, config.vocab_size)
        for tensor in plan:
            nbytes = math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize
            writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(tensor.dtype), nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(math.prod(tensor.shape) for tensor in plan)
        written = 0
        for tensor in plan:
            if should_stop is not None and should_stop():
                raise ConversionCancelled()
            writer.write_tensor_data(tensor.load().astype(tensor.dtype))
            written += math.prod(tensor.shape)
            if progress is not None:
                progress(written / total)
        writer.close()
        os.replace(partial, destination)
    except UnsupportedTokenizer as error:
        raise ConversionError(str(error)) from error
    except OSError as error:
        raise ConversionError(f"cannot write {destination.name}: {error}") from error
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return ConversionResult(
        path=destination,
        tensor_count=len(plan),
        parameter_count=total,
        size_bytes=destination.stat().st_size,
    )


def read_llama_config(source: Path) -> LlamaConfig:
    path = source / "config.json"
    if not path.is_file():
        raise ConversionError("config.json is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"config.json cannot be read: {error}") from error
    if not isinstance(raw, dict):
        raise ConversionError("config.json is not a JSON object")
    architectures = raw.get("architectures")
    if not isinstance(architectures, list) or not set(architectures) & set(ARCHITECTURES):
        raise ConversionError(f"not a Llama-family model: architectures is {architectures!r}")

    def positive(key: str, default: float | None = None) -> float:
        value = raw.get(key)  # null counts as absent, as transformers reads it
        if value is None and default is None:
            raise ConversionError(f"config.json has no {key}")
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConversionError(f"config.json's {key} is {value!r}, not a positive number")
        return float(value)

    def whole(key: str, default: int | None = None) -> int:
        value = positive(key, default)
        if value != int(value):
            raise ConversionError(f"config.json's {key} is {value!r}, not a whole number")
        return int(value)

    hidden_size, heads = whole("hidden_size"), whole("num_attention_heads")
    kv_heads = whole("num_key_value_heads", heads)
    head_dim = whole("head_dim", hidden_size // heads)
    if heads % kv_heads or head_dim % 2:
        raise ConversionError(
            f"config.json's attention shape is inconsistent: {heads} heads, "
            f"{kv_heads} key/value heads, head_dim {head_dim}"
        )
    rope_scaling = raw.get("rope_scaling") or {}
    if not isinstance(rope_scaling, dict):
        raise ConversionError(f"config.json's rope_scaling is {rope_scaling!r}, not an object")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ConversionError(f"rope_scaling of type {rope_type!r} is not supported")
    factor = rope_scaling.get("factor", 8.0 if rope_type == "llama3" else 1.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 0:
        raise ConversionError(f"config.json's rope_scaling factor is {factor!r}")
    return LlamaConfig(
        hidden_size=hidden_size,
        layers=whole("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=whole("intermediate_size"),
        vocab_size=whole("vocab_size"),
        context_length=whole("max_position_embeddings"),
        rms_norm_eps=positive("rms_norm_eps"),
        rope_theta=positive("rope_theta", 10000.0),
        rope_scaling={**rope_scaling, "rope_type": rope_type, "factor": float(factor)},
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def _add_metadata(
    writer: gguf.GGUFWriter, config: LlamaConfig, name: str, file_type: gguf.LlamaFileType
) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_head_count(config.heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    if config.rope_scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])
    writer.add_file_type(file_type)
    writer.add_vocab_size(config.vocab_size)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _find_tensors(source: Path) -> dict[str, _StoredTensor]:
    """Every tensor of the folder's safetensors files, by name, from their headers."""
    index = source / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConversionError(f"{index.name} cannot be read: {error}") from error
        # The index names files in this folder, never elsewhere.
        if not all(isinstance(file, str) and Path(file).name == file for file in files):
            raise ConversionError(f"{index.name} names files outside the model folder")
    elif (source / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ConversionError("no safetensors weights found (model.safetensors or its index)")
    tensors: dict[str, _StoredTensor] = {}
    for file in files:
        tensors |= _read_safetensors_header(source / file)
    return tensors


def _read_safetensors_header(path: Path) -> dict[str, _StoredTensor]:
    # The format: an 8-byte little-endian header length, a JSON header of dtype, shape and
    # data_offsets (relative to the end of the header) per tensor, then the data.
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if not 2 <= length <= MAX_HEADER_BYTES:
                raise ConversionError(f"{path.name} is not a safetensors file")
            header = json.loads(file.read(length))
        size = path.stat().st_size
    except (OSError, ValueError) as error:
        raise ConversionError(f"{path.name} cannot be read: {error}") from error
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = (
                entry["dtype"],
                tuple(entry["shape"]),
                entry["data_offsets"],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConversionError(f"{path.name}: tensor {name} has a bad header") from error
        if dtype not in STORED_DTYPES:
            raise ConversionError(
                f"tensor {name} is stored as {dtype}; only F32, F16 and BF16 are supported"
            )
        nbytes = math.prod(shape) * np.dtype(STORED_DTYPES[dtype]).itemsize
        if end - start != nbytes or start < 0 or 8 + length + end > size:
            raise ConversionError(f"{path.name}: tensor {name}'s data is truncated or misplaced")
        tensors[name] = _StoredTensor(path, dtype, shape, 8 + length + start)
    return tensors


def _read_tensor(stored: _StoredTensor) -> Array:
    count = math.prod(stored.shape)
    data = np.fromfile(
        stored.path, dtype=STORED_DTYPES[stored.dtype], count=count, offset=stored.offset
    )
    if stored.dtype == "BF16":  # bfloat16 is the top half of a float32
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False).reshape(stored.shape)


def _plan_tensors(
    config: LlamaConfig, stored: dict[str, _StoredTensor], outtype: str
) -> list[_PlannedTensor]:
    """What to write, in order, after checking every tensor the config implies is there with
    its shape, and that nothing else is (an unknown tensor would be silently dropped)."""
    hidden, vocab = config.hidden_size, config.vocab_size
    q_rows, kv_rows = config.heads * config.head_dim, config.kv_heads * config.head_dim
    expected: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config.layers):
        layer = f"model.layers.{i}"
        expected |= {
            f"{layer}.input_layernorm.weight": (hidden,),
            f"{layer}.self_attn.q_proj.weight": (q_rows, hidden),
            f"{layer}.self_attn.k_proj.weight": (kv_rows, hidden),
            f"{layer}.self_attn.v_proj.weight": (kv_rows, hidden),
            f"{layer}.self_attn.o_proj.weight": (hidden, q_rows),
            f"{layer}.post_attention_layernorm.weight": (hidden,),
            f"{layer}.mlp.gate_proj.weight": (config.intermediate_size, hidden),
            f"{layer}.mlp.up_proj.weight": (config.intermediate_size, hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, config.intermediate_size),
        }
    expected["model.norm.weight"] = (hidden,)
    # Tied models may still store lm_head; llama.cpp uses token_embd when output is absent.
    if not config.tie_word_embeddings or "lm_head.weight" in stored:
        expected["lm_head.weight"] = (vocab, hidden)

    for name in stored:
        if name not in expected and not name.endswith(IGNORED_TENSOR_SUFFIXES):
            raise ConversionError(f"tensor {name} is not part of a Llama model")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.layers)
    plan = []
    for name, shape in expected.items():
        if name not in stored:
            raise ConversionError(f"tensor {name} is missing from the safetensors files")
        if stored[name].shape != shape:
            raise ConversionError(
                f"tensor {name} has shape {stored[name].shape} but config.json says {shape}"
            )
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name  # every expected name is in gguf's Llama map
        heads = config.heads if ".q_proj." in name else config.kv_heads
        permuted = ".q_proj." in name or ".k_proj." in name
        plan.append(
            _PlannedTensor(
                name=gguf_name,
                shape=shape,
                dtype=np.float16 if outtype == "f16" and len(shape) == 2 else np.float32,
                load=_loader(stored[name], heads if permuted else None),
            )
        )
    if config.rope_scaling["rope_type"] == "llama3":
        try:
            factors = llama3_rope_factors(config)
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise ConversionError(
                f"config.json's llama3 rope_scaling is unusable: {error}"
            ) from error
        plan.append(_PlannedTensor("rope_freqs.weight", factors.shape, np.float32, lambda: factors))
    return plan


def _loader(stored: _StoredTensor, permute_heads: int | None) -> Callable[[], Array]:
    def load() -> Array:
        weights = _read_tensor(stored)
        if permute_heads is None:
            return weights
        # Hugging Face's q/k rows hold each head's rotary halves one after the other; llama.cpp
        # rotates neighbouring pairs, so the halves are interleaved (as LlamaModel.permute).
        rows = weights.shape[0]
        return (
            weights.reshape(permute_heads, 2, rows // permute_heads // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape)
        )

    return load


def llama3_rope_factors(config: LlamaConfig) -> Array:
    """Llama 3.1's frequency-dependent rope scaling, as llama.cpp's converter computes it."""
    scaling = config.rope_scaling
    factor = scaling["factor"]
    low_factor = float(scaling.get("low_freq_factor", 1.0))
    high_factor = float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    frequencies = 1.0 / (
        config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float32) / config.head_dim)
    )
    factors = []
    for wavelength in 2 * math.pi / frequencies:
        if wavelength < old_context / high_factor:
            factors.append(1.0)
        elif wavelength > old_context / low_factor:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low_factor) / (high_factor - low_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)
