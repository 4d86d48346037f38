"""Structured outputs: OpenAI's `response_format`, honoured by constrained decoding (llguidance).

    {"type": "json_schema", "json_schema": {"name": "verdict", "schema": {...}, "strict": true}}
    {"type": "json_object"}     any JSON object
    {"type": "text"}            no constraint (the default)

Before each token, llguidance's matcher for the schema masks every token that cannot continue a
valid reply, so the answer parses whatever the model is: a 135M model asked to judge writes
`{"verdict":"A","reason":"..."}` instead of prose. JSON is compact (no free whitespace between
tokens): small models under a flexible-whitespace grammar tend to emit newlines until max_tokens.
A schema llguidance cannot compile is refused before generation (400, with its message); the
matcher built to check it is the one that then decodes the reply. A reply
cut by max_tokens is unfinished JSON with finish_reason "length", as with OpenAI.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class SchemaError(ValueError):
    """A response_format that cannot be decoded under; the message says why."""


def ll_tokenizer(tokenizer, eos_ids: list[int]):
    """llguidance's view of a fast HF tokenizer; built once per loaded tokenizer (~0.5 s)."""
    import llguidance.hf

    with _lock:
        if tokenizer not in _tokenizers:
            try:
                _tokenizers[tokenizer] = llguidance.hf.from_tokenizer(tokenizer, eos_token=eos_ids)
            except ValueError as err:  # slow (python) tokenizers
                raise SchemaError(f"response_format needs a fast tokenizer: {err}") from err
        return _tokenizers[tokenizer]


def matcher_for(kind: str, schema: dict | None, tokenizer, eos_ids: list[int]):
    """A fresh llguidance matcher for one reply under a response_format type (and its schema); None for text.
    SchemaError when the schema cannot be decoded under."""
    from llguidance import LLMatcher

    if kind == "text":
        return None
    schema = {"type": "object"} if kind == "json_object" else schema
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except ValueError as err:
        raise SchemaError(f"response_format.json_schema.schema is not a JSON schema: {err}") from err
    # log_level 0: the error goes back in the 400, not to the server log (a schema may quote the request)
    matcher = LLMatcher(ll_tokenizer(tokenizer, eos_ids), grammar, log_level=0)
    if matcher.is_error():
        raise SchemaError(f"response_format.json_schema.schema cannot be decoded under: {matcher.get_error()}")
    return matcher


def disallowed(matcher, vocab_size: int):
    """A bool mask over the logits: True for every token that cannot continue the reply under the grammar."""
    import torch

    allowed = np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8) > 0
    mask = torch.ones(vocab_size, dtype=torch.bool)  # logits past the tokenizer's vocab: never
    mask[:min(len(allowed), vocab_size)] = torch.from_numpy(~allowed[:vocab_size])
    return mask
