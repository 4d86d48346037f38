"""Length suite: a row must fit in `max_length` tokens of the base model, chat template included.

Over-long rows are dropped (quarantined) and counted, never truncated. A preference pair is as
long as the longer of prompt + chosen and prompt + rejected.

Speed: with a byte-level BPE tokenizer every token covers at least one byte of the rendered
text, so tokens <= UTF-8 bytes of the rendered conversation <= content bytes + template overhead.
Only rows whose bound exceeds `max_length` are rendered and tokenized. The bound is used only
after it is checked for the tokenizer in use: the vocabulary must be byte-level BPE, the
per-message overhead is measured by rendering probes, and a sample of real rows must satisfy it.
Otherwise every row is tokenized. `method` in the report says which happened.

Without a tokenizer (`tunegate validate` with no --base-model) the suite still runs, on bytes:
a row fails when its UTF-8 text exceeds BYTES_PER_TOKEN_BOUND bytes per token of max_length. Common
BPE tokenizers average 3-5 bytes a token on text and code, so a row past the bound is too long for
any of them; a row under it is not proven to fit. `method` says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_checks.text import TextView

RULES = {"length_over_max": "the conversation fits in max_length tokens with the chat template"}
DEFAULT_MAX_LENGTH = 2048  # the CLI's --max-length default
BYTES_PER_TOKEN_BOUND = 8


def conversations(rec: dict) -> list[list[dict]]:
    if "messages" in rec:
        return [rec["messages"]]
    return [[*rec["prompt"], rec["chosen"]], [*rec["prompt"], rec["rejected"]]]


def render(tokenizer, messages: list[dict], tools=None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False)


def token_length(tokenizer, rec: dict) -> int:
    """Tokens of the longest conversation of a record, rendered with the chat template."""
    return max(len(tokenizer(render(tokenizer, conv, rec.get("tools")), add_special_tokens=False).input_ids)
               for conv in conversations(rec))


def is_byte_level(tokenizer) -> bool:
    """True when the tokenizer is BPE over bytes, so no token stands for less than one byte."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    state = backend.to_str()
    return '"type":"BPE"' in state.replace(" ", "") and '"ByteLevel"' in state


def template_overhead(tokenizer) -> tuple[int, int]:
    """(fixed bytes, bytes per message) the chat template adds around contents, measured on probes."""
    def extra(messages):
        return len(render(tokenizer, messages).encode()) - sum(len(m["content"].encode()) for m in messages)

    probes = [
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}] * 3,
    ]
    sizes = [(len(p), extra(p)) for p in probes]
    per_message = max(1, max((e2 - e1) // max(1, n2 - n1) + 1 for (n1, e1), (n2, e2) in zip(sizes, sizes[1:])))
    fixed = max(e - n * per_message for n, e in sizes) + 16
    return max(fixed, 0), per_message


def detect(
    records: list[dict], tokenizer, max_length: int, view: TextView | None = None, sample: int = 200
) -> tuple[pd.DataFrame, list[dict[str, str]], dict]:
    """Flag rows over max_length tokens. Also returns how the lengths were measured."""
    n = len(records)
    method = "tokenized every row"
    to_tokenize = np.arange(n)
    if is_byte_level(tokenizer):
        view = view or TextView.of(records)
        fixed, per_message = template_overhead(tokenizer)
        n_messages = np.fromiter((sum(len(c) for c in conversations(r)) for r in records), np.int64, n)
        special = np.fromiter((bool(r.get("tools")) or any(m.get("tool_calls") for c in conversations(r) for m in c)
                               for r in records), bool, n)
        bound = view.nbytes + fixed + per_message * n_messages  # preference text holds both answers: an over-estimate
        rng = np.random.default_rng(0)
        probe = rng.choice(n, size=min(sample, n), replace=False) if n else np.zeros(0, np.int64)
        holds = all(
            len(render(tokenizer, conv, records[i].get("tools")).encode()) <= bound[i]
            for i in probe if not special[i] for conv in conversations(records[i])
        )
        if holds:
            method = f"byte bound (template overhead {fixed} + {per_message}/message bytes), tokenized the rest"
            to_tokenize = np.flatnonzero((bound > max_length) | special)
    over = np.zeros(n, dtype=bool)
    details: list[dict[str, str]] = [{} for _ in range(n)]
    template_failed = 0
    for i in to_tokenize:
        try:
            tokens = token_length(tokenizer, records[i])
        except Exception:  # a template that refuses the row (bad role order): the format suite names that
            template_failed += 1
            continue
        if tokens > max_length:
            over[i] = True
            details[i]["length_over_max"] = f"{tokens} tokens > max_length {max_length}"
    info = {"method": method, "max_length": max_length, "rows_tokenized": int(len(to_tokenize)),
            "template_failed": template_failed}
    return pd.DataFrame({"length_over_max": over}), details, info


def detect_bytes(records: list[dict], max_length: int, view: TextView | None = None
                 ) -> tuple[pd.DataFrame, list[dict[str, str]], dict]:
    """Flag rows whose text is over BYTES_PER_TOKEN_BOUND x max_length UTF-8 bytes (no tokenizer to count with)."""
    view = view or TextView.of(records)
    limit = BYTES_PER_TOKEN_BOUND * max_length
    over = view.nbytes > limit
    details: list[dict[str, str]] = [{} for _ in range(len(records))]
    for i in np.flatnonzero(over):
        details[i]["length_over_max"] = f"{int(view.nbytes[i])} bytes > {limit} (byte bound, no tokenizer)"
    info = {"method": f"byte bound, no tokenizer: UTF-8 bytes > {BYTES_PER_TOKEN_BOUND} x max_length {max_length} "
                      f"= {limit} (rows under it are not checked against a tokenizer)",
            "max_length": max_length, "rows_tokenized": 0, "template_failed": 0}
    return pd.DataFrame({"length_over_max": over}), details, info
