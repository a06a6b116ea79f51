"""Converting a Hugging Face Llama folder to GGUF without torch, end to end: a tiny random model
(safetensors and a ``tokenizers`` tokenizer) converts, loads in llama.cpp, tokenizes as the Hugging
Face tokenizer does, computes the logits transformers would, quantizes and generates. Bad folders
give a clear ConversionError and leave no file behind."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from tokenizers import Tokenizer

from inference.hf_convert import ConversionCancelled, ConversionError, convert_hf_llama
from tests.hf_models import (
    edit_json,
    read_weights,
    reference_logits,
    remove_tensor,
    shard_weights,
    write_bert_config,
    write_tiny_hf_llama,
)

LAYERS = 2
VOCAB_SIZE = 384
# Words, digits, contractions, punctuation and runs of spaces and newlines: where pre-tokenizers
# differ.
TEXT = "Hello world, the quick brown fox!  It's 2016; WE'LL see 1234567 #llamas @alice.\n\n\tdone"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama", layers=LAYERS)


@pytest.fixture(scope="module")
def converted(tiny_llama, tmp_path_factory) -> Path:
    return convert_hf_llama(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny.f16.gguf").path


def load(path: Path, **settings) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, **settings)


def generate(llm: llama_cpp.Llama) -> dict:
    # A random model may pick the end token at any step; 8 tokens are what is asked for.
    return llm.create_completion(
        "hello", max_tokens=8, temperature=0, logit_bias={llm.token_eos(): -100.0}
    )


def test_a_converted_llama_loads_tokenizes_like_hugging_face_and_generates(tiny_llama, tmp_path):
    fractions: list[float] = []
    result = convert_hf_llama(tiny_llama, tmp_path / "tiny.gguf", progress=fractions.append)

    assert result.path == tmp_path / "tiny.gguf"
    assert result.size_bytes == result.path.stat().st_size
    assert result.parameter_count == sum(t.size for t in read_weights(tiny_llama).values())
    assert result.tensor_count == 2 + 9 * LAYERS + 1  # embeddings, norm, layers, output
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(fractions) == result.tensor_count
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no partial file left

    llm = load(result.path)
    hugging_face = Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))
    ids = llm.tokenize(TEXT.encode(), add_bos=False)
    assert ids == hugging_face.encode(TEXT).ids
    assert llm.detokenize(ids) == TEXT.encode()
    assert llm.tokenize(b"hi", add_bos=True)[0] == llm.token_bos() == 0
    assert llm.token_eos() == 1
    assert "messages" in llm.metadata["tokenizer.chat_template"]

    completion = generate(llm)
    assert completion["usage"]["completion_tokens"] == 8
    assert completion["choices"][0]["finish_reason"] == "length"


def test_the_gguf_says_what_the_config_says(converted):
    reader = gguf.GGUFReader(converted)

    def value(key: str) -> object:
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("general.name") == "tiny-llama"
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert value("llama.block_count") == LAYERS
    assert value("llama.embedding_length") == 64
    assert value("llama.feed_forward_length") == 128
    assert value("llama.attention.head_count") == 4
    assert value("llama.attention.head_count_kv") == 2
    assert value("llama.rope.dimension_count") == 16
    assert value("llama.context_length") == 256
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"
    tokens = value("tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == VOCAB_SIZE
    assert tokens[:2] == ["<s>", "</s>"] and tokens[-1] == f"[PAD{VOCAB_SIZE - 1}]"
    types = value("tokenizer.ggml.token_type")
    assert isinstance(types, list)
    assert types[:3] == [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.NORMAL]
    assert types[-1] == gguf.TokenType.UNUSED
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32


@pytest.mark.parametrize(
    ("dtype", "tied"), [("float32", False), ("bfloat16", True)], ids=["f32", "bf16-tied"]
)
def test_the_gguf_computes_the_logits_transformers_would(tmp_path, dtype, tied):
    # float32 output, so only the arithmetic's order differs; the logits spread over about ±10.
    source = write_tiny_hf_llama(tmp_path / "hf", dtype=dtype, tie_word_embeddings=tied, seed=3)
    result = convert_hf_llama(source, tmp_path / "tiny.f32.gguf", outtype="f32")
    assert ("output.weight" in {t.name for t in gguf.GGUFReader(result.path).tensors}) != tied

    llm = load(result.path, logits_all=True)
    ids = llm.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    expected = reference_logits(source, ids)
    assert np.abs(expected).max() > 3
    np.testing.assert_allclose(got, expected, atol=0.02)


def test_a_converted_gguf_quantizes_to_q8_0_and_still_generates(converted, tmp_path):
    quantized = tmp_path / "tiny.q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert (
        llama_cpp.llama_model_quantize(
            str(converted).encode(), str(quantized).encode(), ctypes.byref(params)
        )
        == 0
    )

    reader = gguf.GGUFReader(quantized)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert quantized.stat().st_size < converted.stat().st_size
    assert generate(load(quantized))["usage"]["completion_tokens"] == 8


def test_sharded_weights_convert_like_a_single_file(tiny_llama, converted, tmp_path):
    sharded = shard_weights(write_tiny_hf_llama(tmp_path / "tiny-llama", layers=LAYERS))
    assert not (sharded / "model.safetensors").exists()
    result = convert_hf_llama(sharded, tmp_path / "sharded.gguf")
    assert result.path.read_bytes() == converted.read_bytes()


def test_a_llama_3_style_tokenizer_tokenizes_like_hugging_face(tmp_path):
    source = write_tiny_hf_llama(tmp_path / "hf", pre_tokenizer="llama-bpe", layers=1)
    result = convert_hf_llama(source, tmp_path / "tiny.gguf")
    reader = gguf.GGUFReader(result.path)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"

    llm = load(result.path, vocab_only=True)
    ids = llm.tokenize(TEXT.encode(), add_bos=False)
    assert ids == Tokenizer.from_file(str(source / "tokenizer.json")).encode(TEXT).ids
    assert llm.detokenize(ids) == TEXT.encode()


def test_llama_3_1_rope_scaling_becomes_the_rope_factors_llama_cpp_reads(tmp_path):
    source = write_tiny_hf_llama(tmp_path / "hf", layers=1)
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    edit_json(source / "config.json", rope_scaling=scaling)
    result = convert_hf_llama(source, tmp_path / "tiny.gguf")

    factors = {t.name: t.data for t in gguf.GGUFReader(result.path).tensors}["rope_freqs.weight"]
    # Wavelengths 2π·10000^(i/16) for i = 0, 2, .., 14: under 8192/4 unscaled, over 8192 scaled
    # by 8, and 2π·1000 ≈ 6283 between: 1 / ((1 - s) / 8 + s) with s = (8192 / 6283 - 1) / 3.
    np.testing.assert_allclose(factors, [1, 1, 1, 1, 1, 1, 4.6815, 8], rtol=1e-4)
    assert generate(load(result.path))["usage"]["completion_tokens"] == 8


def _sentencepiece_only(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x00")


def _metaspace_tokenizer(folder: Path) -> None:
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    edit_json(folder / "tokenizer.json", pre_tokenizer=metaspace)


def _escaping_index(folder: Path) -> None:
    index = {"weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (
            lambda f: remove_tensor(f, "model.layers.1.mlp.up_proj.weight"),
            "tensor model.layers.1.mlp.up_proj.weight is missing from the safetensors files",
        ),
        (
            lambda f: edit_json(f / "config.json", intermediate_size=96),
            "tensor model.layers.0.mlp.gate_proj.weight has shape (128, 64) "
            "but config.json says (96, 64)",
        ),
        (
            lambda f: edit_json(f / "config.json", num_hidden_layers=1),
            "tensor model.layers.1.input_layernorm.weight is not part of a Llama model",
        ),
        (
            lambda f: (f / "model.safetensors").unlink(),
            "no safetensors weights found (model.safetensors or its index)",
        ),
        (_escaping_index, "model.safetensors.index.json names files outside the model folder"),
        (
            _sentencepiece_only,
            "the SentencePiece tokenizer.model is not supported: only byte-level BPE "
            "tokenizers (GPT-2, Llama 3 or SmolLM style) are supported",
        ),
        (
            _metaspace_tokenizer,
            "tokenizer.json is a SentencePiece-style tokenizer: only byte-level BPE tokenizers "
            "(GPT-2, Llama 3 or SmolLM style) are supported",
        ),
        (
            lambda f: edit_json(f / "config.json", rope_scaling={"rope_type": "yarn"}),
            "rope_scaling of type 'yarn' is not supported",
        ),
    ],
    ids=[
        "no-config",
        "missing-tensor",
        "wrong-shape",
        "extra-tensor",
        "no-weights",
        "escaping-index",
        "sentencepiece",
        "metaspace",
        "yarn",
    ],
)
def test_a_bad_folder_is_refused_clearly_and_leaves_no_file(tmp_path, spoil, message):
    source = write_tiny_hf_llama(tmp_path / "hf", layers=LAYERS)
    spoil(source)
    output = tmp_path / "out"
    with pytest.raises(ConversionError) as refused:
        convert_hf_llama(source, output / "model.gguf")
    assert str(refused.value) == message
    assert not output.exists() or list(output.iterdir()) == []


def test_another_architecture_is_refused_by_name(tmp_path):
    with pytest.raises(
        ConversionError, match=r"not a Llama-family model: architectures is \['BertModel'\]"
    ):
        convert_hf_llama(write_bert_config(tmp_path / "bert"), tmp_path / "bert.gguf")
    assert not (tmp_path / "bert.gguf").exists()


def test_a_stopped_conversion_is_cancelled_and_leaves_no_file(tiny_llama, tmp_path):
    fractions: list[float] = []
    with pytest.raises(ConversionCancelled, match="the conversion was cancelled"):
        convert_hf_llama(
            tiny_llama,
            tmp_path / "tiny.gguf",
            progress=fractions.append,
            should_stop=lambda: len(fractions) == 3,
        )
    assert len(fractions) == 3
    assert list(tmp_path.iterdir()) == []
