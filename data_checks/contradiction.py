"""Contradiction suite: new rows that answer a curated prompt without the curated answer's key facts.

Curated rows are those from `data.domain_files`; every other row (feedback, general data) is new.
A new row is flagged `conflicts_with_curated` when
- its prompt is close to a curated row's prompt: Jaccard similarity of their term sets (words and CJK
  bigrams, data_checks.facts.terms) >= `threshold`. Candidates come from the near-duplicate
  machinery (MinHash LSH over single-term shingles), then the exact Jaccard decides; and
- its answer keeps less than `min_fact_share` of the closest curated answer's key facts
  (data_checks.facts: names, numbers, recurring rare domain terms), or replaces one: it drops a
  name or number of the curated answer and brings a name or number that is not common in the
  curated data (Gatekeeper -> ChatGPT, port 8443 -> 8080).

The detail names the curated row's file:line, the facts the new answer dropped and the names it
brought instead. A preference pair is judged by its chosen answer: that is what DPO teaches.

The production regression set (prompts users asked, with references no window can rewrite) is a
second reference: a feedback row that answers one of its prompts without that reference's key facts
is `conflicts_with_production` (same test, the reference's own facts), so a window that rewrites what
users were told before stops at the data stage instead of training for minutes until the gate blocks it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_checks.duplicates import cross_candidate_pairs, shingle_jaccard, signatures_and_keys
from data_checks.facts import FactIndex, fact_share, missing_facts, names_and_numbers, present, term_texts
from data_checks.leakage import prompt_text
from data_checks.text import TextView

RULES = {"conflicts_with_curated": "no new row answers a curated prompt without the curated answer's key facts"}
PRODUCTION_RULES = {"conflicts_with_production": "no feedback row answers a production-set prompt without its "
                    "reference's key facts"}


def production_references(rows: list[dict], version: str) -> list[dict]:
    """Production-set rows as reference records: the conversation answered by its reference, its facts kept."""
    return [{"id": f"production-{i}", "messages": [*r["conversation"], {"role": "assistant", "content": r["reference"]}],
             "facts": r.get("facts", []), "source": {"file": f"production set {version}", "line": i}}
            for i, r in enumerate(rows, start=1)]


def answer_text(rec: dict) -> str:
    if "messages" in rec:
        last = rec["messages"][-1] if rec["messages"] else {}
        return last.get("content") or "" if isinstance(last, dict) else ""
    chosen = rec.get("chosen") or {}
    return chosen.get("content") or "" if isinstance(chosen, dict) else ""


def closest_curated(prompts: list[str], curated: np.ndarray, threshold: float,
                    num_perm: int = 64, chunk_rows: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """For each row, its most similar curated row by prompt (-1: none >= threshold) and that similarity."""
    n = len(prompts)
    best, score = np.full(n, -1, dtype=np.int64), np.zeros(n)
    if n == 0 or not curated.any() or curated.all():
        return best, score
    view = TextView.of_texts(term_texts(prompts))
    sig, _ = signatures_and_keys(view, num_perm, shingle_words=1)
    # Densification fills a short text's empty bins from its neighbours, so neighbouring bins repeat one term:
    # bands of shuffled bins keep two prompts that share one common word from colliding in every band.
    sig = sig[:, np.random.default_rng(0).permutation(num_perm)]
    cur, others = np.flatnonzero(curated), np.flatnonzero(~curated)
    for first in range(0, len(others), chunk_rows):  # bounded memory, whatever the number of candidates
        rows = np.concatenate([cur, others[first : first + chunk_rows]])
        a, b = cross_candidate_pairs(sig[rows], np.arange(len(rows)) < len(cur), threshold)
        a, b = rows[a], rows[b]  # a curated, b new
        # The signature estimate rules out most candidates; only those near it get the exact Jaccard.
        near = (sig[a] == sig[b]).mean(axis=1) >= threshold - 0.15
        a, b = a[near], b[near]
        if len(a) == 0:
            continue
        similarity = shingle_jaccard(view, a, b, 1)
        keep = similarity >= threshold
        new, old, similarity = b[keep], a[keep], similarity[keep]
        order = np.lexsort((old, -similarity, new))  # per new row: best first; ties go to the earlier curated row
        found, top = np.unique(new[order], return_index=True)
        best[found], score[found] = old[order][top], similarity[order][top]
    return best, score


def detect(
    records: list[dict],
    curated_records: list[dict],
    facts: FactIndex,
    threshold: float = 0.5,
    min_fact_share: float = 0.34,
    rule: str = "conflicts_with_curated",
) -> tuple[pd.DataFrame, list[dict[str, str]], list[dict]]:
    """Check `records` against `curated_records` (or production references, with their rule): (flag column,
    details per row, one entry per conflict). A reference that carries its key facts (`facts`) is held to those."""
    n, n_curated = len(records), len(curated_records)
    prompts = [prompt_text(r) for r in curated_records] + [prompt_text(r) for r in records]
    curated = np.arange(n_curated + n) < n_curated
    match, similarity = closest_curated(prompts, curated, threshold)
    match, similarity = match[n_curated:], similarity[n_curated:]
    flagged = np.zeros(n, dtype=bool)
    details: list[dict[str, str]] = [{} for _ in range(n)]
    conflicts = []
    curated_facts: dict[int, tuple] = {}  # per curated row: its answer, key facts, names and numbers
    for i in np.flatnonzero(match >= 0):
        if match[i] not in curated_facts:
            text = answer_text(curated_records[match[i]])
            curated_facts[match[i]] = (text, curated_records[match[i]].get("facts") or facts.facts(text),
                                       names_and_numbers(text))
        ref, wanted, ref_names = curated_facts[match[i]]
        answer = answer_text(records[i])
        dropped = missing_facts(wanted, answer)
        share = fact_share(wanted, answer, dropped)
        # A swap: a name or number of the curated answer is gone, and one foreign to the domain came instead.
        replaced = any(f in ref_names for f in dropped) and any(
            not present(f, ref) and not facts.common_in_domain(f) for f in names_and_numbers(answer))
        if share >= min_fact_share and not replaced:
            continue
        brought = [f for f in facts.facts(answer) if not present(f, ref)]
        flagged[i] = True
        src = curated_records[match[i]]["source"]
        where = f"curated {src['file']}:{src['line']}" if rule == "conflicts_with_curated" else \
            f"{src['file']} row {src['line']}"
        details[i][rule] = (f"prompt {similarity[i]:.0%} like {where}, whose key facts {dropped} it drops"
                            + (f" for {brought}" if brought else ""))
        conflicts.append({"row": int(i), "prompt": prompts[n_curated + i], "curated": f"{src['file']}:{src['line']}",
                          "curated_prompt": prompts[match[i]],
                          "similarity": float(similarity[i]), "fact_share": share, "dropped": dropped,
                          "brought": brought})
    return pd.DataFrame({rule: flagged}), details, conflicts
