"""Format suite: required fields, known roles, no empty content, and a final assistant turn."""

from __future__ import annotations

import pandas as pd

ROLES = {"system", "user", "assistant"}
RULES = {
    "format_no_messages": "the row has at least one message",
    "format_unknown_role": "every role is system, user or assistant",
    "format_empty_content": "no message content is empty or not a string",
    "format_no_assistant_last": "the conversation ends with an assistant turn",
}


def _row_problems(messages) -> dict[str, str]:
    problems = {}
    if not isinstance(messages, list) or not messages:
        return {"format_no_messages": "no messages"}
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES and "format_unknown_role" not in problems:
            problems["format_unknown_role"] = f"message {i}: role {role!r}"
        if (not isinstance(content, str) or not content.strip()) and "format_empty_content" not in problems:
            problems["format_empty_content"] = f"message {i} ({role}) is empty"
    if messages[-1].get("role") != "assistant":
        problems["format_no_assistant_last"] = f"last message is {messages[-1].get('role')!r}"
    return problems


def detect(records: list[dict]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Boolean column per rule, plus per-row details for the quarantine reasons."""
    details = [_row_problems(r.get("messages")) for r in records]
    frame = pd.DataFrame({rule: [rule in d for d in details] for rule in RULES}, index=range(len(records)))
    return frame, details
