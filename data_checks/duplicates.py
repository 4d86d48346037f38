"""Duplicates suite: exact copies and near-duplicates within the training data.

- exact: the same words in the same order, ASCII case and whitespace ignored (a 64-bit key per
  row over its word hashes; two different rows of a million collide with odds of about 1 in 30 million).
- near: MinHash LSH over word shingles. Candidate pairs whose signatures estimate a Jaccard
  similarity within 0.15 of the threshold get their exact Jaccard over 40-bit shingle hashes
  (few pairs, vectorised); pairs at or over the threshold are grouped; the first row of a group is kept, later
  ones are flagged.
- short rows: one changed word removes n shingles of n words and adds n, so in a row of W words the
  Jaccard falls to (W-2n+1)/(W+1); under 39 words with 3-word shingles that is below 0.85, and a
  30-word answer with one word changed (Jaccard about 0.82) would pass as new. A pair whose shorter row
  is that short is judged on the largest shingles a one-word change leaves at the threshold (at 0.85:
  2-word shingles from 26 words), same threshold, exact Jaccard. Its candidates come from a second
  MinHash LSH over 2-word shingles, of the rows under 46 words only (long rows cost a word count).
  Never single words: they ignore order, and under 26 words one word is often what the row is about
  ("Who are you?" / "Who built you?" with one answer are two curated prompts, not a copy). Two
  different answers to the same question share the question and a few common words, far below.

The MinHash is one-permutation hashing (Li, Owen, Zhang 2012) with rotation densification
(Shrivastava, Li 2014): every shingle is hashed once, its top bits pick one of `num_perm` bins and
the row keeps the minimum of the low bits per bin. That costs O(shingles) instead of
O(shingles x num_perm), and runs as a few numpy passes over all rows at once. LSH bands are
chosen like datasketch's MinHashLSH, but weighted towards recall, since every candidate pair is
checked afterwards.
"""

from __future__ import annotations

import math

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


def lsh_bands(threshold: float, num_perm: int, fn_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows per band) minimising weighted false positive + false negative probability mass.

    False negatives weigh more (0.95, datasketch's default is 0.5): every candidate pair is checked
    against the threshold on its signatures afterwards, so extra candidates cost little, while a
    missed pair is a duplicate left in the training data.
    """
    xs = np.linspace(0, 1, 201)
    best, best_err = (1, num_perm), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - xs**r) ** b
            fp = np.trapezoid(np.where(xs < threshold, p, 0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1 - p, 0), xs)
            err = (1 - fn_weight) * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def minhash_signatures(view: TextView, num_perm: int = 32, shingle_words: int = 3) -> np.ndarray:
    """(rows, num_perm) uint32 one-permutation MinHash signatures; rows without words are all 0xFFFFFFFF."""
    return signatures_and_keys(view, num_perm, shingle_words)[0]


def signatures_and_keys(view: TextView, num_perm: int = 32, shingle_words: int = 3) -> tuple[np.ndarray, np.ndarray]:
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


def subset_signatures(view: TextView, rows: np.ndarray, num_perm: int, shingle_words: int) -> np.ndarray:
    """(len(rows), num_perm) MinHash signatures of the given sorted rows only, over `shingle_words`-word shingles."""
    sig = np.full((len(rows), num_perm), _EMPTY, dtype=np.uint32)
    shift = np.uint64(64 - int(np.log2(num_perm)))
    chosen = np.zeros(len(view), dtype=bool)
    chosen[rows] = True
    position = np.cumsum(chosen) - 1  # a chosen row's line in sig
    for first, end in view.chunks():
        lo, hi = position[first] + (not chosen[first]), position[end - 1] + 1  # its chosen rows: sig[lo:hi]
        if lo >= hi:
            continue
        words, local = view.chunk_words(first, end)
        keep = chosen[first:end][local]
        shingles, shingle_rows = ngram_hashes(words[keep], local[keep].astype(np.int64), shingle_words, short_rows_whole=True)
        values = (shingles & np.uint64(0xFFFFFFFE)).astype(np.uint32)
        at = (position[shingle_rows + first] - lo) * num_perm + (shingles >> shift).astype(np.int64)
        part = sig[lo:hi]
        np.minimum.at(part.reshape(-1), at, values)
        sig[lo:hi] = _densify(part)
    return sig


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


def _row_shingles(view: TextView, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct 40-bit shingle hashes of the given (sorted, unique) rows: (hashes, row of each), grouped by row."""
    hashes, owners = [], []
    for first, end in view.chunks():
        wanted = rows[(rows >= first) & (rows < end)] - first
        if len(wanted) == 0:
            continue
        words, local = view.chunk_words(first, end)
        keep = np.isin(local, wanted)
        grams, gram_rows = ngram_hashes(words[keep], local[keep].astype(np.int64), n, short_rows_whole=True)
        hashes.append(grams)
        owners.append(gram_rows + first)
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    hashes, owners = np.concatenate(hashes), np.concatenate(owners)
    # One sort of (row, top 40 bits of the hash) packed in a uint64 is much faster than a lexsort.
    index = np.searchsorted(rows, owners)
    packed = np.sort((index.astype(np.uint64) << np.uint64(40)) | (hashes >> np.uint64(24)))
    distinct = np.ones(len(packed), dtype=bool)
    distinct[1:] = packed[1:] != packed[:-1]
    packed = packed[distinct]
    return packed & np.uint64((1 << 40) - 1), rows[(packed >> np.uint64(40)).astype(np.int64)]


def shingle_jaccard(view: TextView, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Jaccard similarity of the shingle sets of rows a[i] and b[i] (40-bit shingle hashes), vectorised."""
    hashes, owners = _row_shingles(view, np.unique(np.concatenate([a, b])), n)
    start = np.searchsorted(owners, np.arange(len(view) + 1))

    def expand(rows):  # every shingle of rows[i], labelled with its pair i
        counts = start[rows + 1] - start[rows]
        pair = np.repeat(np.arange(len(rows)), counts)
        offset = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
        return pair, hashes[start[rows][pair] + offset], counts

    pair_a, hash_a, size_a = expand(a)
    pair_b, hash_b, size_b = expand(b)
    packed = np.sort((np.concatenate([pair_a, pair_b]).astype(np.uint64) << np.uint64(40))
                     | np.concatenate([hash_a, hash_b]))
    shared = packed[1:] == packed[:-1]  # in both sets (each set is distinct on its own)
    inter = np.bincount((packed[1:][shared] >> np.uint64(40)).astype(np.int64), minlength=len(a))
    union = size_a + size_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def band_keys(sig: np.ndarray, band: int, rows_per_band: int, mult: np.ndarray) -> np.ndarray:
    """One 64-bit LSH bucket key per row for one band of its signature."""
    block = sig[:, band * rows_per_band : (band + 1) * rows_per_band].astype(np.uint64)
    with np.errstate(over="ignore"):
        return splitmix64((block * mult).sum(axis=1, dtype=np.uint64))


def cross_candidate_pairs(sig: np.ndarray, left: np.ndarray, threshold: float,
                          fn_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (a in left, b not in left) that share an LSH bucket: pairs within one side are never formed,
    so a few curated rows against a million others costs O(rows x bands), not the pairs of the million.
    Balanced weighting (0.5): at low thresholds a recall-weighted banding makes most pairs of short texts
    candidates."""
    bands, rows_per_band = lsh_bands(threshold, sig.shape[1], fn_weight)
    mult = splitmix64(np.arange(1, rows_per_band + 1, dtype=np.uint64))
    live = sig[:, 0] != _EMPTY
    lefts, rights = np.flatnonzero(left & live), np.flatnonzero(~left & live)
    found_a, found_b = [], []
    for band in range(bands):
        left_keys = band_keys(sig[lefts], band, rows_per_band, mult)
        order = np.argsort(left_keys, kind="stable")
        left_keys = left_keys[order]
        right_keys = band_keys(sig[rights], band, rows_per_band, mult)
        lo, hi = np.searchsorted(left_keys, right_keys, "left"), np.searchsorted(left_keys, right_keys, "right")
        counts = hi - lo
        hit = np.flatnonzero(counts)
        if len(hit) == 0:
            continue
        reps = counts[hit]
        offset = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        found_a.append(lefts[order[np.repeat(lo[hit], reps) + offset]])
        found_b.append(np.repeat(rights[hit], reps))
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    packed = np.unique((np.concatenate(found_a).astype(np.uint64) << np.uint64(32))
                       | np.concatenate(found_b).astype(np.uint64))
    return (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)


def candidate_pairs(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct row pairs (a < b) that share an LSH bucket in some band: the near-duplicate candidates."""
    n, k = sig.shape
    if n >= 1 << 24:
        raise ValueError(f"{n} rows: near-duplicate search packs row numbers in 24 bits; split the data")
    bands, rows_per_band = lsh_bands(threshold, k)
    live = np.flatnonzero(sig[:, 0] != _EMPTY) if n else np.zeros(0, np.int64)
    pairs = []
    mult = splitmix64(np.arange(1, rows_per_band + 1, dtype=np.uint64))
    for band in range(bands):
        keys = band_keys(sig[live], band, rows_per_band, mult)
        # Sort (top 40 bits of the band key, row) packed in one uint64: rows stay in order within a bucket.
        packed = np.sort((keys >> np.uint64(24) << np.uint64(24)) | np.arange(len(keys), dtype=np.uint64))
        order = (packed & np.uint64((1 << 24) - 1)).astype(np.int64)
        sorted_keys = packed >> np.uint64(24)
        run_start = np.ones(len(order), dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        leader = order[np.flatnonzero(run_start)[np.cumsum(run_start) - 1]]
        member = order != leader
        pairs.append(np.stack([live[leader[member]], live[order[member]]]))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    both = np.concatenate(pairs, axis=1).astype(np.uint64)
    distinct = np.unique((both[0] << np.uint64(24)) | both[1])  # rows fit in 24 bits
    return (distinct >> np.uint64(24)).astype(np.int64), (distinct & np.uint64((1 << 24) - 1)).astype(np.int64)


def one_edit_words(shingle_words: int, threshold: float) -> int:
    """The fewest words a row needs for one changed word to leave its shingle Jaccard at the threshold:
    W - n + 1 shingles, n of them replaced, (S - n) / (S + n) >= threshold. 39 for 3 words at 0.85."""
    n = shingle_words
    return math.ceil(n * (1 + threshold) / (1 - threshold) - 1e-9) + n - 1


def word_counts(view: TextView) -> np.ndarray:
    """Words in each row (the duplicate checks' words: runs of bytes above 0x20)."""
    counts = np.zeros(len(view), dtype=np.int64)
    for first, end in view.chunks():
        counts[first:end] = np.bincount(view.chunk_words(first, end)[1], minlength=end - first)
    return counts


def _judge(view: TextView | None, estimate: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float,
           shingle_words: int, margin: float) -> np.ndarray:
    """Which candidate pairs (rows a[i], b[i]) are near-duplicates: the signature estimate, or near the threshold
    the exact Jaccard."""
    similar = estimate >= threshold
    if view is not None:
        # The estimate's spread (about 0.06 at 32 values) would drop true pairs just above the threshold:
        # pairs it puts within `margin` of it get their exact shingle Jaccard instead. Identical signatures stay.
        unsure = np.flatnonzero((estimate >= threshold - margin) & (estimate < 1.0))
        if len(unsure):
            similar[unsure] = shingle_jaccard(view, a[unsure], b[unsure], shingle_words) >= threshold
    return similar


def short_row_pairs(view: TextView, threshold: float, shingle_words: int, num_perm: int = 32,
                    margin: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate pairs among rows with too few words for `shingle_words`-word shingles to see one changed
    word (and their partners): each judged by the exact Jaccard on the largest shingles that can, never under
    2 words (module docstring).

    Candidates come from a MinHash LSH over 2-word shingles of those rows, banded `margin` under the
    threshold, so pairs whose 2-word Jaccard sits just over it are nearly all candidates.
    """
    if shingle_words <= 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    counts = word_counts(view)
    shortest, longest = one_edit_words(2, threshold), one_edit_words(shingle_words, threshold)
    # Rows that can be in such a pair: Jaccard >= threshold needs shingle counts within a factor threshold.
    rows = np.flatnonzero((counts >= int(shortest * threshold)) & (counts < longest / threshold + 1))
    if len(rows) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sig = subset_signatures(view, rows, num_perm, 2)
    i, j = candidate_pairs(sig, threshold - margin)  # positions in rows
    shorter = np.minimum(counts[rows[i]], counts[rows[j]])
    keep = (shorter >= shortest) & ((sig[i] == sig[j]).mean(axis=1) >= threshold - margin)
    a, b, shorter = rows[i[keep]], rows[j[keep]], shorter[keep]
    # The largest shingles one changed word leaves at the threshold; `shingle_words` for a pair of rows long
    # enough for those (one the main LSH happened to miss), so the threshold means what it means there.
    size = np.full(len(a), 2, dtype=np.int64)
    for m in range(3, shingle_words + 1):
        size[shorter >= one_edit_words(m, threshold)] = m
    similar = np.zeros(len(a), dtype=bool)
    for m in np.unique(size):
        at = np.flatnonzero(size == m)
        similar[at] = shingle_jaccard(view, a[at], b[at], int(m)) >= threshold
    return a[similar], b[similar]


def near_duplicate_groups(
    sig: np.ndarray, threshold: float, view: TextView | None = None, shingle_words: int = 3, margin: float = 0.15
) -> np.ndarray:
    """For each row, the first row of its near-duplicate group (itself when it has none).

    With `view`, candidate pairs whose estimate is near the threshold are decided by their exact Jaccard, and
    short rows are compared on smaller shingles too (short_row_pairs).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sig)
    a, b = candidate_pairs(sig, threshold)
    similar = _judge(view, (sig[a] == sig[b]).mean(axis=1), a, b, threshold, shingle_words, margin)
    a, b = a[similar], b[similar]
    if view is not None and shingle_words > 1:
        short_a, short_b = short_row_pairs(view, threshold, shingle_words, sig.shape[1], margin)
        a, b = np.concatenate([a, short_a]), np.concatenate([b, short_b])
    if len(a) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


def detect(
    records: list[dict],
    view: TextView | None = None,
    near_threshold: float = 0.85,
    num_perm: int = 32,
    shingle_words: int = 3,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The first occurrence is kept; later copies are flagged with the file and line they repeat."""
    view = view or TextView.of(records)
    n = len(records)
    sig, keys = signatures_and_keys(view, num_perm, shingle_words)
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first_exact = first_index[inverse] if n else np.zeros(0, np.int64)
    exact = (first_exact != np.arange(n)) & (keys != 0)
    leader = near_duplicate_groups(sig, near_threshold, view, shingle_words)
    near = (leader != np.arange(n)) & ~exact
    details: list[dict[str, str]] = [{} for _ in range(n)]
    for i in np.flatnonzero(exact):
        src = records[first_exact[i]]["source"]
        details[i]["duplicates_exact"] = f"duplicate of {src['file']}:{src['line']}"
    for i in np.flatnonzero(near):
        src = records[leader[i]]["source"]
        details[i]["duplicates_near"] = f"near-duplicate of {src['file']}:{src['line']}"
    return pd.DataFrame({"duplicates_exact": exact, "duplicates_near": near}), details
