"""Leakage suite: training rows that contain an eval item's prompt are removed from training.

Eval items are the general holdout file and the domain rows that prepare will hold out (validate
computes that split with prepare's own `is_eval_row`, so both agree). An eval item's prompt is
every turn before its reference answer.

- exact: the training row's prompt equals an eval prompt (ASCII case and whitespace ignored). Rows
  whose first words hash like an eval prompt are the candidates; only their prompt text is compared.
- n-gram: the training row shares a run of `ngram` words with an eval prompt (GPT-3 and
  lm-eval's decontamination use 13; prompts shorter than `ngram` words are covered by exact).

Only prompts count: the reference answers of identity-style data are templated on purpose, and a
training row that gives the same answer to another question teaches the task, not the test.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from data_checks.text import _SEQ, _SEQ_SALT, TextView, _powers, message_text, ngram_hashes, sequence_keys, splitmix64

RULES = {
    "leakage_exact": "no training prompt equals an eval prompt",
    "leakage_ngram": "no training row shares an n-gram with an eval prompt",
}


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_WORD = re.compile(r"[^\x00-\x20]+")


def normalise(text: str) -> str:
    """Words as the word hashes see them: split at ASCII whitespace and controls, ASCII-lowercased."""
    return " ".join(_WORD.findall(text.translate(_ASCII_LOWER)))


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """np.isin for a small sorted set: a binary search per value instead of sorting both."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def first_words_keys(words: np.ndarray, rows: np.ndarray, n_rows: int, lengths: list[int]) -> list[np.ndarray]:
    """For each k in lengths, every row's `sequence_keys` of its first k words (0 where it has fewer)."""
    counts = np.bincount(rows, minlength=n_rows)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = []
    with np.errstate(over="ignore"):
        pos = np.arange(len(words)) - first[rows]
        weighted = words * _powers(_SEQ, int(pos.max()) + 1 if len(pos) else 1)[pos]
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)))
        for k in lengths:
            keys = np.zeros(n_rows, dtype=np.uint64)
            ok = counts >= k
            keys[ok] = splitmix64((prefix[first[ok] + k] - prefix[first[ok]]) ^ _SEQ_SALT)
            out.append(keys)
    return out


def prompt_text(rec: dict) -> str:
    """The turns before the answer: SFT messages but the last; a preference pair's prompt."""
    messages = rec["messages"][:-1] if "messages" in rec else rec.get("prompt") or []
    return "\n".join(message_text(m) for m in messages if isinstance(m, dict))


def detect(
    records: list[dict],
    eval_prompts: list[str],
    is_eval: np.ndarray | None = None,
    ngram: int = 13,
    view: TextView | None = None,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Flag training rows (not `is_eval`) that overlap an eval prompt. `view` is of the rows' full text."""
    n = len(records)
    is_eval = np.zeros(n, dtype=bool) if is_eval is None else is_eval
    view = view or TextView.of(records)
    eval_texts = {normalise(p) for p in eval_prompts} - {""}
    evals = TextView.of_texts(sorted(eval_texts))
    eval_words, eval_rows = evals.words()
    eval_grams = np.unique(ngram_hashes(eval_words, eval_rows, ngram, short_rows_whole=False)[0])
    # Exact: a row is a candidate when its first k words hash like a k-word eval prompt; then its prompt is compared.
    eval_len = np.bincount(eval_rows, minlength=len(evals))
    eval_keys = {k: np.unique(sequence_keys(eval_words, eval_rows, len(evals))[eval_len == k]) for k in set(eval_len)}

    exact_candidates, near = [], np.zeros(n, dtype=bool)
    for first, end in view.chunks():
        words, rows = view.chunk_words(first, end)
        for k, prefix_keys in zip(eval_keys, first_words_keys(words, rows, end - first, list(eval_keys))):
            exact_candidates.append(first + np.flatnonzero(_isin_sorted(prefix_keys, eval_keys[k])))
        if len(eval_grams):
            grams, gram_rows = ngram_hashes(words, rows, ngram, short_rows_whole=False)
            near[first + gram_rows[_isin_sorted(grams, eval_grams)]] = True
    exact = np.zeros(n, dtype=bool)
    for i in np.unique(np.concatenate(exact_candidates)) if exact_candidates else ():
        exact[i] = normalise(prompt_text(records[i])) in eval_texts
    exact &= ~is_eval
    near &= ~is_eval & ~exact

    details: list[dict[str, str]] = [{} for _ in range(n)]
    for i in np.flatnonzero(exact):
        details[i]["leakage_exact"] = "its prompt is an eval prompt"
    for i in np.flatnonzero(near):
        details[i]["leakage_ngram"] = f"shares a {ngram}-word run with an eval prompt"
    return pd.DataFrame({"leakage_exact": exact, "leakage_ngram": near}), details
