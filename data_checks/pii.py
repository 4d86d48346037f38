"""PII suite: emails and phone numbers in any message. Policy: reject the row, or redact the value."""

from __future__ import annotations

import re

import pandas as pd

PATTERNS = {
    "EMAIL": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    # Needs separators or a leading +, so plain numbers ("1234567890 items") are not phones.
    "PHONE": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
        r"|(?<![\w+])\+\d{1,3}(?:[\s.-]\d{2,5}){2,4}\b"
        r"|(?<![\w+])\+\d{7,14}\b"
    ),
}
RULES = {f"pii_{kind.lower()}": f"no {kind.lower()} address or number in any message" for kind in PATTERNS}


def conversation_text(messages: list[dict]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages)


def detect(records: list[dict]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Flag rows per PII type. Details name the message, never the value."""
    texts = pd.Series([conversation_text(r.get("messages") or []) for r in records], dtype="string")
    frame = pd.DataFrame({f"pii_{k.lower()}": texts.str.contains(p, regex=True).fillna(False).values
                          for k, p in PATTERNS.items()})
    details = [{col: f"contains {col.removeprefix('pii_')}" for col in frame.columns if row[col]}
               for row in frame.to_dict("records")]
    return frame, details


def redact(text: str) -> str:
    """Replace each PII value with a typed placeholder such as <EMAIL>."""
    for kind, pattern in PATTERNS.items():
        text = pattern.sub(f"<{kind}>", text)
    return text
