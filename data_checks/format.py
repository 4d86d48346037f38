"""Format suite: required fields, known roles, role order, no empty content, clean text.

Role order: an optional system message first; then user and assistant alternate; an assistant
message with `tool_calls` is followed by one or more `tool` messages, then the assistant again.
SFT rows end with an assistant answer; a preference prompt ends with a user (or tool) turn and
its chosen and rejected answers are assistant messages.

Rows that could not even be read or converted are flagged at ingest under the first five rules
below; validate folds them into this suite's counts, so their thresholds work like any other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_checks.text import TextView

ROLES = {"system", "user", "assistant", "tool"}
INGEST_RULES = {
    "format_invalid_json": "every row parses (JSON, CSV)",
    "format_invalid_utf8": "every row is valid UTF-8 (no undecodable bytes, no lone surrogates)",
    "format_row_too_large": "no row is larger than the ingest limit",
    "format_missing_field": "every row has the fields of a known format",
    "format_wrong_type": "every field has the right type",
}
RULES = {
    **INGEST_RULES,
    "format_unknown_role": "every role is system, user, assistant or tool",
    "format_role_order": "system first if present, user and assistant alternate, tool results follow tool calls",
    "format_no_assistant_last": "an SFT conversation ends with an assistant answer",
    "format_empty_content": "no message content is empty (an assistant tool call may have none)",
    "format_control_chars": "no control characters other than tab and newline",
}
# Control bytes other than \t \n \r, plus the UTF-8 lead bytes of C1 controls (C2 80..9F) are checked below.
_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[[*range(0, 9), 11, 12, *range(14, 32), 127]] = True


def _order_problem(roles: list, has_calls: list[bool], final: str) -> str | None:
    """None when the sequence of roles is valid; otherwise what is wrong, at which message."""
    expect = {"user", "system"}
    for i, (role, calls) in enumerate(zip(roles, has_calls)):
        if role not in expect:
            return f"message {i} is {role}, expected {' or '.join(sorted(expect))}"
        if role == "system":
            expect = {"user"}
        elif role == "user":
            expect = {"assistant"}
        elif role == "assistant":
            expect = {"tool"} if calls else {"user"}
        else:  # tool
            expect = {"tool", "assistant"}
    return None


def _messages_problems(messages, final: str) -> dict[str, str]:
    """Rule -> reason for one list of messages. `final`: 'assistant' (SFT) or 'prompt' (preference prompt)."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return {"format_missing_field": "no messages"}
    problems = {}
    roles = [m.get("role") for m in messages]
    calls = [bool(m.get("tool_calls")) for m in messages]
    for i, m in enumerate(messages):
        if roles[i] not in ROLES and "format_unknown_role" not in problems:
            problems["format_unknown_role"] = f"message {i}: role {roles[i]!r}"
        content = m.get("content")
        if not isinstance(content, str) or (not content.strip() and not calls[i]):
            problems.setdefault("format_empty_content", f"message {i} ({roles[i]}) is empty")
    if "format_unknown_role" not in problems:
        order = _order_problem(roles, calls, final)
        if order:
            problems["format_role_order"] = order
    if final == "assistant" and (roles[-1] != "assistant" or calls[-1]):
        problems["format_no_assistant_last"] = f"last message is {roles[-1]!r}" + (" (a tool call)" if calls[-1] else "")
    if final == "prompt" and roles[-1] not in ("user", "tool"):
        problems["format_role_order"] = f"the prompt ends with {roles[-1]!r}, not a user turn"
    return problems


def _sft_problems(messages, by_shape: dict) -> dict[str, str]:
    """SFT rows whose contents are all present: the answer depends only on roles and tool calls, so memoise it."""
    if type(messages) is not list or not messages or not all(type(m) is dict for m in messages):
        return _messages_problems(messages, "assistant")
    shape = tuple([(m.get("role"), bool(m.get("tool_calls"))) for m in messages])
    for m in messages:
        content = m.get("content")
        if type(content) is not str or not (content.strip() or m.get("tool_calls")):
            return _messages_problems(messages, "assistant")
    found = by_shape.get(shape)
    if found is None:
        found = by_shape[shape] = _messages_problems(messages, "assistant")
    return found  # shared between rows: callers copy before changing it


def row_problems(rec: dict, by_shape: dict | None = None) -> dict[str, str]:
    """Rule -> reason for one canonical record (SFT or preference)."""
    if "messages" in rec:
        return _sft_problems(rec["messages"], {} if by_shape is None else by_shape)
    problems = _messages_problems(rec.get("prompt"), "prompt")
    for key in ("chosen", "rejected"):
        answer = rec.get(key)
        if not isinstance(answer, dict):
            problems.setdefault("format_missing_field", f"no {key} answer")
            continue
        if answer.get("role") != "assistant":
            problems.setdefault("format_role_order", f"{key} answer has role {answer.get('role')!r}, not assistant")
        content = answer.get("content")
        if not isinstance(content, str) or (not content.strip() and not answer.get("tool_calls")):
            problems.setdefault("format_empty_content", f"{key} answer is empty")
    return problems


def text_problems(view: TextView) -> tuple[np.ndarray, np.ndarray]:
    """(rows with control characters, rows with lone surrogates), from one pass over the shared bytes."""
    n = len(view)
    if n == 0:  # no texts: the buffer holds only padding, which belongs to no row
        return np.zeros(0, bool), np.zeros(0, bool)
    buf = view.buf[:-15]  # without the padding after the last text's NUL
    control = _CONTROL[buf]
    control[view.starts + view.nbytes] = False  # the NUL that ends each text
    c1 = np.flatnonzero((buf[:-1] == 0xC2) & (buf[1:] >= 0x80) & (buf[1:] <= 0x9F))
    surrogate = np.flatnonzero((buf[:-1] == 0xED) & (buf[1:] >= 0xA0))
    ctrl_rows, bad_rows = np.zeros(n, bool), np.zeros(n, bool)
    ctrl_rows[view.row_of(np.concatenate([np.flatnonzero(control), c1]))] = True
    bad_rows[view.row_of(surrogate)] = True
    return ctrl_rows, bad_rows


def detect(records: list[dict], view: TextView | None = None) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Boolean column per rule, plus per-row details for the quarantine reasons."""
    view = view or TextView.of(records)
    by_shape: dict = {}
    details = [row_problems(r, by_shape) for r in records]
    control, surrogate = text_problems(view)
    for i in np.flatnonzero(control):
        details[i] = {**details[i], "format_control_chars": "contains control characters"}
    for i in np.flatnonzero(surrogate):
        details[i] = {**details[i], "format_invalid_utf8": "contains a lone surrogate (not encodable as UTF-8)"}
    return flag_frame(details, RULES), details


def flag_frame(details: list[dict[str, str]], rules) -> pd.DataFrame:
    """One boolean column per rule, True where the row's details name that rule."""
    columns = {rule: np.zeros(len(details), dtype=bool) for rule in rules}
    for i, d in enumerate(details):
        for rule in d:
            columns[rule][i] = True
    return pd.DataFrame(columns)
