"""Duplicates suite: exact duplicates of the whole conversation, after normalising case and spaces."""

from __future__ import annotations

import hashlib
import re

import pandas as pd

RULES = {"duplicates_exact": "no conversation repeats an earlier one (case and whitespace ignored)"}
_SPACES = re.compile(r"\s+")


def conversation_key(messages: list[dict]) -> str:
    text = "\x1f".join(f"{m.get('role')}\x1e{m.get('content')}" for m in messages)
    return hashlib.sha1(_SPACES.sub(" ", text).strip().lower().encode()).hexdigest()


def detect(records: list[dict]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The first occurrence is kept; later copies are flagged with the file and line they repeat."""
    keys = pd.Series([conversation_key(r.get("messages") or []) for r in records])
    dup = keys.duplicated(keep="first")
    first_index = keys.drop_duplicates(keep="first")
    first_of = dict(zip(first_index.values, first_index.index))
    details = []
    for i, (key, is_dup) in enumerate(zip(keys, dup)):
        if is_dup:
            src = records[first_of[key]]["source"]
            details.append({"duplicates_exact": f"duplicate of {src['file']}:{src['line']}"})
        else:
            details.append({})
    return pd.DataFrame({"duplicates_exact": dup.values}), details
