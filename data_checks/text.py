"""The text of canonical records, built once and shared by the detectors that read text.

    view = TextView.of(records)      # every detector also builds it itself when not given one

A record's text is its message contents joined by newlines (a tool call contributes its JSON,
so arguments are scanned for PII too); a preference pair's text is prompt, chosen, rejected.
All texts are also laid end to end as UTF-8 in one numpy byte buffer, each followed by a NUL,
so byte-level scans (control characters, digit runs, words) run vectorised over every row at once.

Words are runs of bytes above 0x20 (so any ASCII whitespace or control byte separates them),
ASCII-lowercased. Each gets a 64-bit hash, folded 8 bytes at a time from a zero-copy uint64
window view of the buffer, so the cost is per word, not per byte. The duplicate and leakage checks
combine word hashes into row keys, shingles and n-grams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

_CHUNK_BYTES = 1 << 20  # small enough that a chunk's temporaries stay in cache and reuse freed memory
_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [2**64 - 1], dtype=np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64's finaliser), elementwise; wraps mod 2**64 as intended."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


_SEQ, _SEQ_SALT = np.uint64(0x9E3779B97F4A7C15), np.uint64(0x5851F42D4C957F2D)  # row keys: sum h_j * SEQ**j
_Q = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2**64
_Q_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)  # uint64 products wrap mod 2**64


def message_text(m: dict) -> str:
    content = m.get("content")
    text = content if isinstance(content, str) else ""
    if m.get("tool_calls"):
        text += "\n" + json.dumps(m["tool_calls"], ensure_ascii=False)
    return text


def record_text(rec: dict) -> str:
    """All the text a record trains on (the PII, duplicate and leakage checks read this)."""
    if "messages" in rec:
        msgs = rec["messages"] if isinstance(rec["messages"], list) else []
    else:
        msgs = [*(rec.get("prompt") or []), rec.get("chosen") or {}, rec.get("rejected") or {},
                *(rec.get("rejected_prompt") or [])]
    return "\n".join(message_text(m) for m in msgs if isinstance(m, dict))


@dataclass
class TextView:
    texts: list[str]
    buf: np.ndarray  # uint8: text 0, NUL, text 1, NUL, ...
    starts: np.ndarray  # int64 byte offset of each text
    nbytes: np.ndarray  # int64 UTF-8 length of each text
    _words: tuple | None = field(default=None, repr=False)
    _chunk_words: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, records: list[dict]) -> TextView:
        texts = [record_text(r) for r in records]
        return cls.of_texts(texts)

    @classmethod
    def of_texts(cls, texts: list[str]) -> TextView:
        # surrogatepass: a lone surrogate (invalid UTF-8) becomes bytes ED A0..BF, which the format check finds.
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        nbytes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded), dtype=np.int64)
        if len(encoded) > 1:
            np.cumsum(nbytes[:-1] + 1, out=starts[1:])
        # Trailing NULs: the last word can be read 8 bytes at a time without running off the end.
        buf = np.frombuffer(b"\x00".join(encoded) + b"\x00" * 16, dtype=np.uint8)
        return cls(texts, buf, starts, nbytes)

    def __len__(self) -> int:
        return len(self.texts)

    def row_of(self, positions: np.ndarray) -> np.ndarray:
        """The row that each byte position in `buf` belongs to."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def chunks(self, max_bytes: int = _CHUNK_BYTES):
        """(first row, end row) ranges whose bytes fit in about max_bytes, for bounded-memory passes."""
        ends = self.starts + self.nbytes + 1
        first = 0
        while first < len(self.texts):
            end = int(np.searchsorted(ends, self.starts[first] + max_bytes, side="right"))
            end = max(end, first + 1)
            yield first, end
            first = end

    def chunk_words(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every word, row of every word counted from `first`) for rows first..end-1; cached."""
        key = (first, end)
        if key not in self._chunk_words:
            self._chunk_words[key] = self._hash_chunk(first, end)
        return self._chunk_words[key]

    def _hash_chunk(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.starts[first]), int(self.starts[end - 1] + self.nbytes[end - 1]) + 1
        h, word_start = _word_hashes(self.buf[lo:hi], self._windows, lo)
        bounds = np.append(self.starts[first:end] - lo, hi - lo)
        per_row = np.diff(np.searchsorted(word_start, bounds))
        return h, np.repeat(np.arange(end - first, dtype=np.int32), per_row)

    def words(self) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every word, row of every word), in text order, for all rows; computed once."""
        if self._words is None:
            parts = [self.chunk_words(first, end) for first, end in self.chunks()]
            self._words = (np.concatenate([h for h, _ in parts]) if parts else np.zeros(0, np.uint64),
                           np.concatenate([r.astype(np.int64) + first for (_, r), (first, _) in zip(parts, self.chunks())])
                           if parts else np.zeros(0, np.int64))
        return self._words

    @property
    def _windows(self) -> np.ndarray:
        return _windows(self.buf)


def _windows(buf: np.ndarray) -> np.ndarray:
    """A zero-copy view: element i is the 8 bytes buf[i:i+8] as a little-endian uint64."""
    return np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))


def _lower_ascii(x: np.ndarray) -> np.ndarray:
    """ASCII-lowercase the 8 bytes packed in each uint64 (SWAR: flag bytes in A..Z, add 0x20)."""
    with np.errstate(over="ignore"):
        low7 = x & np.uint64(0x7F7F7F7F7F7F7F7F)
        ge_a = low7 + np.uint64(0x3F3F3F3F3F3F3F3F)  # high bit set where byte >= 'A'
        gt_z = low7 + np.uint64(0x2525252525252525)  # high bit set where byte > 'Z'
        upper = (ge_a & ~gt_z & ~x) & np.uint64(0x8080808080808080)
        return x | (upper >> np.uint64(2))


def _word_hashes(chunk: np.ndarray, windows: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word of a byte chunk (words: runs of bytes > 0x20), 8 bytes at a time per word."""
    sep = chunk <= 32
    inner = ~sep
    starts = np.flatnonzero(inner[1:] & sep[:-1]) + 1
    if len(chunk) and inner[0]:
        starts = np.concatenate(([0], starts))
    ends = np.flatnonzero(inner[:-1] & sep[1:]) + 1
    if len(chunk) and inner[-1]:
        ends = np.append(ends, len(chunk))
    lengths = ends - starts
    at = starts + offset
    with np.errstate(over="ignore"):
        # The first two 8-byte blocks of every word at once (multiply-xorshift folds, one full mix at
        # the end); longer words loop over the few that are left.
        h = (lengths.astype(np.uint64) ^ (_lower_ascii(windows[at]) & _MASKS[np.minimum(lengths, 8)])) * _M1
        h ^= h >> np.uint64(29)
        h = (h ^ (_lower_ascii(windows[at + 8]) & _MASKS[np.clip(lengths - 8, 0, 8)])) * _M2
        todo = np.flatnonzero(lengths > 16)
        block = 2
        while len(todo):
            left = lengths[todo] - 8 * block
            x = _lower_ascii(windows[at[todo] + 8 * block]) & _MASKS[np.minimum(left, 8)]
            h[todo] = ((h[todo] ^ (h[todo] >> np.uint64(29))) ^ x) * _M2
            todo = todo[left > 8]
            block += 1
    return splitmix64(h), starts


def sequence_keys(hashes: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """One 64-bit key per row for its whole word sequence (order matters); 0 for rows without words."""
    keys = np.zeros(n_rows, dtype=np.uint64)
    if len(hashes) == 0:
        return keys
    with np.errstate(over="ignore"):
        first_word = np.searchsorted(rows, np.arange(n_rows), side="left")
        pos = np.arange(len(hashes)) - first_word[rows]
        weighted = hashes * _powers(_SEQ, int(pos.max()) + 1)[pos]
        has = np.bincount(rows, minlength=n_rows) > 0
        sums = np.add.reduceat(weighted, first_word[has])  # rows are sorted, so each row is one segment
        keys[has] = splitmix64(sums ^ _SEQ_SALT)
    return keys


def ngram_hashes(hashes: np.ndarray, rows: np.ndarray, n: int, short_rows_whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of n consecutive words within a row, and the row of each.

    With `short_rows_whole`, a row with fewer than n words gets one n-gram: the key of all its words.
    """
    m = len(hashes)
    if m < n:
        full_h, full_rows = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    else:
        # Rolling polynomial: gram_i = sum_j h[i+j] * Q**j = (S[i+n] - S[i]) * Q**-i, from one prefix sum.
        with np.errstate(over="ignore"):
            prefix = np.zeros(m + 1, dtype=np.uint64)
            np.cumsum(hashes * _powers(_Q, m), out=prefix[1:])
            acc = (prefix[n:] - prefix[: m - n + 1]) * _powers(_Q_INV, m - n + 1)
        inside = rows[n - 1 :] == rows[: m - n + 1]
        full_h, full_rows = splitmix64(acc[inside]), rows[: m - n + 1][inside]
    if not short_rows_whole:
        return full_h, full_rows
    counts = np.bincount(rows, minlength=int(rows.max()) + 1 if m else 0)
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short) == 0:
        return full_h, full_rows
    in_short = np.isin(rows, short)
    keys = sequence_keys(hashes[in_short], rows[in_short], len(counts))[short]
    all_rows = np.concatenate([full_rows, short])
    order = np.argsort(all_rows, kind="stable")
    return np.concatenate([full_h, keys])[order], all_rows[order]
