"""Structured outputs: OpenAI's `response_format`, honoured by constrained decoding (llguidance).

    {"type": "json_schema", "json_schema": {"name": "verdict", "schema": {...}, "strict": true}}
    {"type": "json_object"}     any JSON object
    {"type": "text"}            no constraint (the default)

Before each token, llguidance's matcher for the schema masks every token that cannot continue a
valid reply, so the answer parses whatever the model is: a 135M model asked to judge writes
`{"verdict":"A","reason":"..."}` instead of prose. JSON is compact (no free whitespace between
tokens): small models under a flexible-whitespace grammar tend to emit newlines until max_tokens.
A schema llguidance cannot compile is refused before generation (400, with its message). A reply
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


def grammar_for(kind: str, schema: dict | None, tokenizer, eos_ids: list[int]) -> str | None:
    """The llguidance grammar for a response_format type (and its schema), None for text; SchemaError if unusable."""
    from llguidance import LLMatcher

    if kind == "text":
        return None
    schema = {"type": "object"} if kind == "json_object" else schema
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except ValueError as err:
        raise SchemaError(f"response_format.json_schema.schema is not a JSON schema: {err}") from err
    problem = LLMatcher.validate_grammar(grammar, ll_tokenizer(tokenizer, eos_ids))
    if problem and not problem.startswith("WARNING"):
        raise SchemaError(f"response_format.json_schema.schema cannot be decoded under: {problem}")
    return grammar


def schema_constraint(grammar: str, tokenizer, eos_ids: list[int]):
    """A fresh transformers LogitsProcessor for one generation (the matcher holds that reply's state)."""
    import torch
    from llguidance import LLMatcher
    from transformers import LogitsProcessor

    class SchemaConstraint(LogitsProcessor):
        def __init__(self):
            self.matcher = LLMatcher(ll_tokenizer(tokenizer, eos_ids), grammar)
            self.prompt_length: int | None = None

        def __call__(self, input_ids, scores):
            if self.prompt_length is None:
                self.prompt_length = input_ids.shape[1]
            elif not self.matcher.consume_token(int(input_ids[0, -1])):
                raise RuntimeError(f"constrained decoding lost the grammar: {self.matcher.get_error()}")
            allowed = np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8) > 0
            mask = torch.ones(scores.shape[-1], dtype=torch.bool)  # logits past the tokenizer's vocab: never
            mask[:min(len(allowed), scores.shape[-1])] = torch.from_numpy(~allowed[:scores.shape[-1]])
            return scores.masked_fill(mask, float("-inf"))

    return SchemaConstraint()
