"""Preference-pair suite: a pair teaches something only when its two answers differ and share a prompt.

Runs on preference records only (the format suite already checks each message's shape).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from data_checks.text import message_text

RULES = {
    "preference_empty_answer": "chosen and rejected are both non-empty",
    "preference_same_answer": "chosen differs from rejected (case and whitespace ignored)",
    "preference_prompt_mismatch": "chosen and rejected answer the same prompt",
}
_SPACES = re.compile(r"\s+")


def _norm(message) -> str:
    return _SPACES.sub(" ", message_text(message)).strip().lower() if isinstance(message, dict) else ""


def pair_problems(rec: dict) -> dict[str, str]:
    chosen, rejected = _norm(rec.get("chosen")), _norm(rec.get("rejected"))
    problems = {}
    if not chosen or not rejected:
        problems["preference_empty_answer"] = f"{'chosen' if not chosen else 'rejected'} answer is empty"
    elif chosen == rejected:
        problems["preference_same_answer"] = "chosen and rejected are the same text"
    if "rejected_prompt" in rec and rec["rejected_prompt"] != rec.get("prompt"):
        problems["preference_prompt_mismatch"] = "the rejected answer continues a different conversation"
    return problems


def detect(records: list[dict]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    details = [pair_problems(r) for r in records]
    columns = {rule: np.array([rule in d for d in details], dtype=bool) for rule in RULES}
    return pd.DataFrame(columns, index=range(len(records))), details
