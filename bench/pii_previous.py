"""The PII detector as it was at 8c3a631 (before issue 15), kept so benchmarks compare against it in the same run.

bench/pii_corpus.py and bench/data_checks_speed.py import it; nothing in the pipeline does.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

import numpy as np
import pandas as pd

from data_checks.text import TextView

TYPES = ("API_KEY", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "PHONE", "IP_ADDRESS", "SECRET")  # match priority
RULES = {f"pii_{t.lower()}": f"no {t.lower().replace('_', ' ')} in any message" for t in TYPES}

PATTERNS = {
    "API_KEY": re.compile(
        r"(?<![A-Za-z0-9])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|sk_live_[0-9A-Za-z]{24,}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|github_pat_[A-Za-z0-9_]{22,}|AKIA[0-9A-Z]{16}|xox[bpas]-[A-Za-z0-9-]{15,}|glpat-[A-Za-z0-9_-]{20,}"
        r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z]{30,})"
    ),
    "EMAIL": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "IBAN": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    "CREDIT_CARD": re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    "SSN": re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
    # Needs separators or a leading +, so plain numbers ("1234567890 items") are not phones.
    "PHONE": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
        r"|(?<![\w+])\+\d{1,3}(?:[\s.-]\d{2,5}){2,4}\b"
        r"|(?<![\w+])\+\d{7,14}\b"
    ),
    "IP_ADDRESS": re.compile(
        r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
    ),
    "SECRET": re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{24,}(?![A-Za-z0-9+/=_-])"),
}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _valid(kind: str, value: str) -> bool:
    if kind == "CREDIT_CARD":
        digits = re.sub(r"[ -]", "", value)
        return 13 <= len(digits) <= 19 and luhn_ok(digits)
    if kind == "IBAN":
        return iban_ok(value)
    if kind == "IP_ADDRESS":
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return False
        return ip.version == 4 or value.count(":") >= 2 and any(c.isdigit() or c in "abcdefABCDEF" for c in value)
    if kind == "SECRET":
        return any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and _entropy(value) >= 4.0
    return True


def find_pii(text: str, kinds=TYPES) -> list[tuple[int, int, str]]:
    """(start, end, type) of every validated PII value; a span claimed by an earlier type is not re-used."""
    spans: list[tuple[int, int, str]] = []
    for kind in kinds:
        for m in PATTERNS[kind].finditer(text):
            s, e = m.span()
            if any(s < pe and ps < e for ps, pe, _ in spans):
                continue
            if _valid(kind, m.group()):
                spans.append((s, e, kind))
    return sorted(spans)


def redact(text: str, kinds=TYPES) -> str:
    """Replace each PII value of the given types with a typed placeholder such as <EMAIL>."""
    spans = find_pii(text, kinds)
    for s, e, kind in reversed(spans):
        text = text[:s] + f"<{kind}>" + text[e:]
    return text


# Byte weights summed over sliding windows with one cumulative sum each (counts wrap mod 2**8 / 2**16 harmlessly).
_DIGIT_DOT = np.zeros(256, dtype=np.uint8)  # low 4 bits count digits, high 4 bits count dots, in 12-byte windows
_DIGIT_DOT[ord("0"):ord("9") + 1] = 1
_DIGIT_DOT[ord(".")] = 16
_TOKEN_COLON = np.zeros(256, dtype=np.uint16)  # low 6 bits count key/token characters, the rest colons (20 bytes)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/=_-":
    _TOKEN_COLON[_c] = 1
_TOKEN_COLON[ord(":")] = 64


def _window_sums(weights: np.ndarray, width: int) -> np.ndarray:
    """Element i: the sum of weights[i : i + width]."""
    sums = np.zeros(len(weights) + 1, dtype=weights.dtype)
    np.cumsum(weights, dtype=weights.dtype, out=sums[1:])
    return sums[width:] - sums[:-width]


_sums = np.arange(256)
_DIGIT_DOT_HIT = ((_sums & 15) >= 8) | (((_sums >> 4) >= 3) & ((_sums & 15) >= 4))  # 8+ digits; or an IPv4
_sums = np.arange(65536)
_TOKEN_COLON_HIT = ((_sums & 63) == 20) | ((_sums >> 6) >= 5)  # 20 key characters in a row; or IPv6 colons


def candidate_rows(view: TextView, chunk_bytes: int = 1 << 20) -> np.ndarray:
    """Rows that may hold PII: a superset of the rows any full pattern can match."""
    raw = view.buf.base if isinstance(view.buf.base, bytes) else view.buf.tobytes()
    hits = []
    for needle in (b"@", b"::"):  # key prefixes need no search: every known key is 20+ token characters
        at = raw.find(needle)
        while at >= 0:
            hits.append(at)
            at = raw.find(needle, at + 1)
    found = [np.array(hits, dtype=np.int64)]
    for lo in range(0, len(view.buf), chunk_bytes):
        part = view.buf[lo : lo + chunk_bytes + 24]
        found.append(lo + np.flatnonzero(_DIGIT_DOT_HIT[_window_sums(_DIGIT_DOT[part], 12)]))
        found.append(lo + np.flatnonzero(_TOKEN_COLON_HIT[_window_sums(_TOKEN_COLON[part], 20)]))
    positions = np.concatenate(found)
    return np.unique(view.row_of(positions)) if len(positions) else np.zeros(0, np.int64)


def detect(records: list[dict], view: TextView | None = None) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Flag rows per PII type. Details name the type and how many values, never the value."""
    view = view or TextView.of(records)
    n = len(records)
    flags = {t: np.zeros(n, dtype=bool) for t in TYPES}
    details: list[dict[str, str]] = [{} for _ in range(n)]
    for i in candidate_rows(view):
        for kind, count in Counter(k for _, _, k in find_pii(view.texts[i])).items():
            flags[kind][i] = True
            details[i][f"pii_{kind.lower()}"] = f"contains {count} {kind.lower().replace('_', ' ')} value(s)"
    return pd.DataFrame({f"pii_{t.lower()}": flags[t] for t in TYPES}), details
