"""Duplicates suite: exact copies and near-duplicates within the training data.

- exact: the same words in the same order, ASCII case and whitespace ignored (a 64-bit key per
  row over its word hashes; two different rows of a million collide with odds of about 1 in 30 million).
- near: MinHash LSH over word shingles. Rows whose estimated Jaccard similarity reaches the
  threshold are grouped; the first row of a group is kept, later ones are flagged.

The MinHash is one-permutation hashing (Li, Owen, Zhang 2012) with rotation densification
(Shrivastava, Li 2014): every shingle is hashed once, its top bits pick one of `num_perm` bins and
the row keeps the minimum of the low bits per bin. That costs O(shingles) instead of
O(shingles x num_perm), and runs as a few numpy passes over all rows at once. LSH bands are
chosen, like datasketch's MinHashLSH, to minimise false positives plus false negatives at the
threshold, and every candidate pair is then checked against the threshold on its signatures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_checks.text import TextView, ngram_hashes, sequence_keys, splitmix64

RULES = {
    "duplicates_exact": "no conversation repeats an earlier one (case and whitespace ignored)",
    "duplicates_near": "no conversation is a near-duplicate (MinHash Jaccard >= threshold) of an earlier one",
}
_EMPTY = np.uint32(0xFFFFFFFF)


def conversation_key(messages: list[dict]) -> str:
    """A stable text key of a conversation (prepare's split hashes it); case and spaces ignored."""
    import hashlib
    import re

    text = "\x1f".join(f"{m.get('role')}\x1e{m.get('content')}" for m in messages)
    return hashlib.sha1(re.sub(r"\s+", " ", text).strip().lower().encode()).hexdigest()


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positive + false negative probability mass at threshold."""
    xs = np.linspace(0, 1, 201)
    best, best_err = (1, num_perm), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - xs**r) ** b
            fp = np.trapezoid(np.where(xs < threshold, p, 0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1 - p, 0), xs)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def minhash_signatures(view: TextView, num_perm: int = 64, shingle_words: int = 3) -> np.ndarray:
    """(rows, num_perm) uint32 one-permutation MinHash signatures; rows without words are all 0xFFFFFFFF."""
    return signatures_and_keys(view, num_perm, shingle_words)[0]


def signatures_and_keys(view: TextView, num_perm: int = 64, shingle_words: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures and exact-duplicate keys of every row, computed chunk by chunk."""
    if num_perm & (num_perm - 1) or not 8 <= num_perm <= 1024:
        raise ValueError(f"num_perm must be a power of two in [8, 1024], got {num_perm}")
    n = len(view)
    sig = np.full((n, num_perm), _EMPTY, dtype=np.uint32)
    keys = np.zeros(n, dtype=np.uint64)
    shift = np.uint64(64 - int(np.log2(num_perm)))
    for first, end in view.chunks():
        words, rows = view.chunk_words(first, end)
        keys[first:end] = sequence_keys(words, rows, end - first)
        shingles, shingle_rows = ngram_hashes(words, rows, shingle_words, short_rows_whole=True)
        part = sig[first:end]
        bins = (shingles >> shift).astype(np.int64)
        values = (shingles & np.uint64(0xFFFFFFFE)).astype(np.uint32)  # never 0xFFFFFFFF, the empty mark
        np.minimum.at(part.reshape(-1), shingle_rows * num_perm + bins, values)
        sig[first:end] = _densify(part)
    return sig, keys


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the next non-empty bin to its right (circularly), offset by the distance."""
    empty = sig == _EMPTY
    todo = np.flatnonzero(empty.any(axis=1) & ~empty.all(axis=1))
    if len(todo) == 0:
        return sig
    part, hole = sig[todo], empty[todo]
    k = sig.shape[1]
    col = np.arange(2 * k, dtype=np.int32)
    index = np.where(np.concatenate([~hole, ~hole], axis=1), col, 2 * k)
    nearest = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1][:, :k]  # next non-empty at or after j
    donor = np.take_along_axis(part, nearest % k, axis=1)
    with np.errstate(over="ignore"):
        shifted = (donor + (nearest - col[:k]).astype(np.uint32) * np.uint32(0x9E3779B1)) & np.uint32(0xFFFFFFFE)
    sig[todo] = np.where(hole, shifted, part)
    return sig


def near_duplicate_groups(sig: np.ndarray, threshold: float) -> np.ndarray:
    """For each row, the first row of its near-duplicate group (itself when it has none)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, k = sig.shape
    bands, rows_per_band = lsh_bands(threshold, k)
    live = np.flatnonzero(sig[:, 0] != _EMPTY) if n else np.zeros(0, np.int64)
    pairs = []
    mult = splitmix64(np.arange(1, rows_per_band + 1, dtype=np.uint64))
    for band in range(bands):
        block = sig[live, band * rows_per_band : (band + 1) * rows_per_band].astype(np.uint64)
        with np.errstate(over="ignore"):
            keys = splitmix64((block * mult).sum(axis=1, dtype=np.uint64))
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        run_start = np.ones(len(order), dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        leader = order[np.flatnonzero(run_start)[np.cumsum(run_start) - 1]]
        member = order != leader
        pairs.append(np.stack([live[leader[member]], live[order[member]]]))
    leader_of = np.arange(n)
    if not pairs:
        return leader_of
    a, b = np.unique(np.concatenate(pairs, axis=1), axis=1)
    if len(a) == 0:
        return leader_of
    similar = (sig[a] == sig[b]).mean(axis=1) >= threshold
    a, b = a[similar], b[similar]
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


def detect(
    records: list[dict],
    view: TextView | None = None,
    near_threshold: float = 0.85,
    num_perm: int = 64,
    shingle_words: int = 3,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The first occurrence is kept; later copies are flagged with the file and line they repeat."""
    view = view or TextView.of(records)
    n = len(records)
    sig, keys = signatures_and_keys(view, num_perm, shingle_words)
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first_exact = first_index[inverse] if n else np.zeros(0, np.int64)
    exact = (first_exact != np.arange(n)) & (keys != 0)
    leader = near_duplicate_groups(sig, near_threshold)
    near = (leader != np.arange(n)) & ~exact
    details: list[dict[str, str]] = [{} for _ in range(n)]
    for i in np.flatnonzero(exact):
        src = records[first_exact[i]]["source"]
        details[i]["duplicates_exact"] = f"duplicate of {src['file']}:{src['line']}"
    for i in np.flatnonzero(near):
        src = records[leader[i]]["source"]
        details[i]["duplicates_near"] = f"near-duplicate of {src['file']}:{src['line']}"
    return pd.DataFrame({"duplicates_exact": exact, "duplicates_near": near}), details
