"""The train/eval split, decided once: stratified by source file and detected language.

    mask, strata, coverage = eval_split(records, domain_files, fraction=0.15, seed=0, min_per_stratum=3)

Only rows of `domain_files` are split; everything else trains. A row's place comes from a hash of
its content and the seed, so it does not depend on file order. Within each stratum (file name +
language), a row is held out when its hash falls below `fraction`, and the stratum's lowest hashes
are added until it has `min_per_stratum` eval rows, as long as one row is left to train on.
Strata that cannot reach the minimum are listed in the coverage with `short: true`.

Language: the script decides for CJK (zh, ja, ko); otherwise py3langid (langid.py's model, shipped
in the package) on the whole conversation, since a one-word prompt alone is too short to tell.
The validate stage owns this decision: the leakage suite and prepare both read it.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_checks.duplicates import conversation_key
from data_checks.text import record_text

_KANA, _HANGUL, _HAN = re.compile("[\u3040-\u30ff]"), re.compile("[\uac00-\ud7af]"), re.compile("[\u3400-\u9fff]")


def language(text: str) -> str:
    """An ISO 639-1 code for the text ('und' when it has no letters)."""
    text = text[:2000]
    letters = sum(c.isalpha() for c in text)
    if not letters:
        return "und"
    if len(_KANA.findall(text)) / letters > 0.1:
        return "ja"
    if len(_HANGUL.findall(text)) / letters > 0.2:
        return "ko"
    if len(_HAN.findall(text)) / letters > 0.2:
        return "zh"
    import py3langid

    return py3langid.classify(text)[0]


def row_hash(messages: list[dict], seed: int) -> float:
    """A number in [0, 1) fixed by the conversation's content and the seed."""
    digest = hashlib.sha256(f"{seed}:{conversation_key(messages)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stratum(rec: dict) -> str:
    return f"{Path(rec['source']['file']).name}/{language(record_text(rec))}"


def eval_split(
    records: list[dict], domain_files, fraction: float, seed: int, min_per_stratum: int
) -> tuple[np.ndarray, list[str | None], list[dict]]:
    """(held-out mask, stratum of each domain row (None elsewhere), coverage per stratum)."""
    domain = {str(f) for f in domain_files}
    strata: list[str | None] = [None] * len(records)
    members: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        if rec["source"]["file"] in domain and isinstance(rec.get("messages"), list) and rec["messages"]:
            strata[i] = stratum(rec)
            members[strata[i]].append(i)
    mask = np.zeros(len(records), dtype=bool)
    coverage = []
    for name, rows in sorted(members.items()):
        hashes = np.array([row_hash(records[i]["messages"], seed) for i in rows])
        order = np.argsort(hashes, kind="stable")
        n_eval = max(int((hashes < fraction).sum()), min(min_per_stratum, len(rows) - 1))
        mask[np.asarray(rows)[order[:n_eval]]] = True
        coverage.append({"stratum": name, "rows": len(rows), "eval": n_eval, "train": len(rows) - n_eval,
                         "short": n_eval < min_per_stratum})
    return mask, strata, coverage
