"""Leakage suite: training rows that contain an eval item's prompt are removed from training.

Eval items are the general holdout file and the domain rows that prepare will hold out (validate
computes that split with prepare's own `is_eval_row`, so both agree). An eval item's prompt is
every turn before its reference answer.

- exact: the training row's prompt equals an eval prompt (ASCII case and whitespace ignored).
- n-gram: the training row shares a run of `ngram` words with an eval prompt (GPT-3 and
  lm-eval's decontamination use 13; prompts shorter than `ngram` words are covered by exact).

Only prompts count: the reference answers of identity-style data are templated on purpose, and a
training row that gives the same answer to another question teaches the task, not the test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_checks.text import TextView, message_text, ngram_hashes, sequence_keys

RULES = {
    "leakage_exact": "no training prompt equals an eval prompt",
    "leakage_ngram": "no training row shares an n-gram with an eval prompt",
}


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
    evals = TextView.of_texts(eval_prompts)
    eval_words, eval_rows = evals.words()
    eval_keys = sequence_keys(eval_words, eval_rows, len(evals))
    eval_grams = ngram_hashes(eval_words, eval_rows, ngram, short_rows_whole=False)[0]

    prompts = TextView.of_texts([prompt_text(r) for r in records])
    p_words, p_rows = prompts.words()
    exact = np.isin(sequence_keys(p_words, p_rows, n), eval_keys[eval_keys != 0]) & ~is_eval
    exact &= prompts.nbytes > 0

    words, rows = view.words()
    grams, gram_rows = ngram_hashes(words, rows, ngram, short_rows_whole=False)
    near = np.zeros(n, dtype=bool)
    near[gram_rows[np.isin(grams, eval_grams)]] = True
    near &= ~is_eval & ~exact

    details: list[dict[str, str]] = [{} for _ in range(n)]
    for i in np.flatnonzero(exact):
        details[i]["leakage_exact"] = "its prompt is an eval prompt"
    for i in np.flatnonzero(near):
        details[i]["leakage_ngram"] = f"shares a {ngram}-word run with an eval prompt"
    return pd.DataFrame({"leakage_exact": exact, "leakage_ngram": near}), details
