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

_CHUNK_BYTES = 1 << 22


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64's finaliser), elementwise; wraps mod 2**64 as intended."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


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

    def words(self) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every word, row of every word), in text order; computed once."""
        if self._words is None:
            hashes, rows = [], []
            windows = _windows(self.buf)
            for first, end in self.chunks():
                lo, hi = int(self.starts[first]), int(self.starts[end - 1] + self.nbytes[end - 1]) + 1
                h, word_start = _word_hashes(self.buf[lo:hi], windows, lo)
                bounds = np.append(self.starts[first:end] - lo, hi - lo)
                per_row = np.diff(np.searchsorted(word_start, bounds))
                hashes.append(h)
                rows.append(np.repeat(np.arange(first, end, dtype=np.int64), per_row))
            self._words = (np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
                           np.concatenate(rows) if rows else np.zeros(0, np.int64))
        return self._words


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
    lengths = (ends - starts).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = lengths * np.uint64(0x9E3779B97F4A7C15)
        todo = np.arange(len(starts))
        block = 0
        while len(todo):
            left = lengths[todo] - np.uint64(8 * block)
            x = _lower_ascii(windows[starts[todo] + offset + 8 * block])
            keep_bits = np.minimum(left, np.uint64(8)) * np.uint64(8)
            mask = np.where(keep_bits >= 64, np.uint64(0xFFFFFFFFFFFFFFFF),
                            (np.uint64(1) << (keep_bits & np.uint64(63))) - np.uint64(1))
            h[todo] = splitmix64(h[todo] ^ (x & mask))
            todo = todo[left > 8]
            block += 1
    return h, starts


def sequence_keys(hashes: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """One 64-bit key per row for its whole word sequence (order matters); 0 for rows without words."""
    keys = np.zeros(n_rows, dtype=np.uint64)
    if len(hashes) == 0:
        return keys
    with np.errstate(over="ignore"):
        first_word = np.searchsorted(rows, np.arange(n_rows), side="left")
        pos = np.arange(len(hashes)) - first_word[rows]
        weighted = hashes * _powers(np.uint64(0x9E3779B97F4A7C15), int(pos.max()) + 1)[pos]
        has = np.bincount(rows, minlength=n_rows) > 0
        sums = np.add.reduceat(weighted, first_word[has])  # rows are sorted, so each row is one segment
        keys[has] = splitmix64(sums ^ np.uint64(0x5851F42D4C957F2D))
    return keys


def ngram_hashes(hashes: np.ndarray, rows: np.ndarray, n: int, short_rows_whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of n consecutive words within a row, and the row of each.

    With `short_rows_whole`, a row with fewer than n words gets one n-gram: the key of all its words.
    """
    m = len(hashes)
    if m < n:
        full_h, full_rows = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    else:
        mult = splitmix64(np.arange(1, n + 1, dtype=np.uint64))
        with np.errstate(over="ignore"):
            acc = hashes[: m - n + 1] * mult[0]
            for j in range(1, n):
                acc += hashes[j : m - n + 1 + j] * mult[j]
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
