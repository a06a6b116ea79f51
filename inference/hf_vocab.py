"""A Hugging Face ``tokenizer.json`` as GGUF tokenizer metadata, read with ``tokenizers``.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM style) become llama.cpp's "gpt2" tokenizer,
with the pre-tokenizer name llama.cpp implements for the same splitting regex. llama.cpp's own
converter finds that name by hashing a tokenization of a fixed text; here it is read from the
tokenizer.json's pre-tokenizer steps, and steps no llama.cpp pre-tokenizer matches are refused
rather than guessed, since a wrong guess tokenizes differently without any error.
SentencePiece tokenizers (``tokenizer.model``, or tokenizer.json with Metaspace and byte
fallback: Llama 2, Mistral 7B) are refused too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.json's pre-tokenizer steps → llama.cpp's name for the same splitting.
KNOWN_PRE_TOKENIZERS: dict[tuple[tuple[object, ...], ...], str] = {
    (("ByteLevel", True),): "gpt-2",
    (("Split", LLAMA3_SPLIT_REGEX), ("ByteLevel", False)): "llama-bpe",
    (("Digits", True), ("ByteLevel", True)): "smollm",
}

SUPPORTED = "only byte-level BPE tokenizers (GPT-2, Llama 3 or SmolLM style) are supported"


class UnsupportedTokenizer(ValueError):
    """The folder's tokenizer cannot be converted; the message says why, for the admin."""


def add_tokenizer(writer: gguf.GGUFWriter, source: Path, vocab_size: int) -> None:
    """Write the tokenizer of ``source`` (tokens padded to the model's ``vocab_size``), its
    merges, special tokens and chat template."""
    from tokenizers import Tokenizer

    path = source / "tokenizer.json"
    if not path.is_file():
        if (source / "tokenizer.model").is_file():
            raise UnsupportedTokenizer(
                f"the SentencePiece tokenizer.model is not supported: {SUPPORTED}"
            )
        raise UnsupportedTokenizer("tokenizer.json is missing")
    try:
        text = path.read_text(encoding="utf-8")
        description = json.loads(text)
        tokenizer = Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a plain Exception
        raise UnsupportedTokenizer(f"tokenizer.json cannot be read: {error}") from error
    if not isinstance(description, dict):
        raise UnsupportedTokenizer("tokenizer.json is not a JSON object")
    pre = _pre_tokenizer_name(description)

    ids = tokenizer.get_vocab(with_added_tokens=True)
    if max(ids.values(), default=-1) >= vocab_size:
        raise UnsupportedTokenizer(
            f"the tokenizer has token id {max(ids.values())} but config.json says "
            f"vocab_size is {vocab_size}"
        )
    added = tokenizer.get_added_tokens_decoder()
    by_id = {token_id: token for token, token_id in ids.items()}
    tokens: list[str] = []
    token_types: list[int] = []
    for token_id in range(vocab_size):
        token = by_id.get(token_id)
        if token is None:  # the embedding has more rows than the tokenizer has tokens
            tokens.append(f"[PAD{token_id}]")
            token_types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            is_control = added[token_id].special or _looks_special(token)
            tokens.append(token)
            token_types.append(
                gguf.TokenType.CONTROL if is_control else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(token)
            token_types.append(gguf.TokenType.NORMAL)

    try:
        special = gguf.SpecialVocab(source, load_merges=True, n_vocab=vocab_size)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UnsupportedTokenizer(f"the tokenizer's files cannot be read: {error}") from error
    if not special.merges:
        raise UnsupportedTokenizer("tokenizer.json has no BPE merges")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer_name(description: dict[str, Any]) -> str:
    model = description.get("model") or {}
    pre_tokenizer = description.get("pre_tokenizer") or {}
    steps = (
        pre_tokenizer.get("pretokenizers", [])
        if pre_tokenizer.get("type") == "Sequence"
        else [pre_tokenizer]
    )
    if (
        model.get("byte_fallback")
        or any(step.get("type") == "Metaspace" for step in steps)
        or model.get("type") != "BPE"
    ):
        kind = "a SentencePiece-style" if model.get("type") == "BPE" else f"a {model.get('type')}"
        raise UnsupportedTokenizer(f"tokenizer.json is {kind} tokenizer: {SUPPORTED}")
    shape = tuple(_step_shape(step) for step in steps)
    name = KNOWN_PRE_TOKENIZERS.get(shape)
    if name is None:
        kinds = ", ".join(str(step.get("type")) for step in steps) or "none"
        raise UnsupportedTokenizer(
            f"tokenizer.json's pre-tokenizer ({kinds}) is not one llama.cpp is known to match: "
            f"{SUPPORTED}"
        )
    return name


def _step_shape(step: dict[str, Any]) -> tuple[object, ...]:
    kind = step.get("type")
    if kind == "ByteLevel":
        # A prefix space llama.cpp would not add: an unknown shape.
        if step.get("add_prefix_space"):
            return (kind, "add_prefix_space")
        return (kind, step.get("use_regex", True))
    if kind == "Split":
        if step.get("behavior") != "Isolated" or step.get("invert"):
            return (kind, "behavior")
        return (kind, (step.get("pattern") or {}).get("Regex"))
    if kind == "Digits":
        return (kind, step.get("individual_digits"))
    return (kind,)


def _looks_special(token: str) -> bool:
    # As llama.cpp's converter: some models leave chat markers such as <|im_end|> unmarked.
    return token.startswith("<|") and token.endswith("|>")
