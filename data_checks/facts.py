"""Key facts of an answer: the distinctive terms a paraphrase must keep and a wrong answer drops.

    from data_checks.facts import FactIndex, present
    index = FactIndex.fit(domain_answers, background_texts)
    index.facts("I am Gatekeeper, an AI assistant developed by the tunegate team.")
    # -> ['gatekeeper', 'ai', 'tunegate', 'assistant', 'team']

A term is a key fact of a reference answer when it is
- a number (any token with a digit: 2019, v3, GPT-3), or
- a name: a word of 2+ letters with an upper-case letter that does not start a sentence (Gatekeeper,
  OpenAI), or
- recurring domain vocabulary that ordinary text lacks: a word of 4+ letters (or a CJK bigram) that
  occurs in at least `min_domain_df` domain answers and in at most `max_background_share` of the
  background texts (the general data). Of these, the `max_rare` most frequent in the domain count,
  so an answer keeps a handful of facts, not every unusual word (ties: the longer term first).

Matching is by normalised text (NFKC, casefold, non-word runs -> one space), word-bounded except
next to CJK. evals/tunegate_metrics.py repeats `normalise`/`present` (as normalize_for_facts and
has_fact): lm-eval loads that file standalone; keep the two in step.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

_NON_WORD = re.compile(r"[^\w]+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(rf"[^\W_{_CJK}]+(?:[-.'][^\W_{_CJK}]+)*")
_SENTENCE_END = re.compile(r"[.!?。！？:：]")
_DIGIT = re.compile(r"\d")


def normalise(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def _cjk(char: str) -> bool:
    return bool(_CJK_RUN.match(char))


def present(fact: str, text: str) -> bool:
    """Is the fact in the text, as whole words? Next to CJK no boundary is needed (CJK has no spaces)."""
    needle, hay = normalise(fact), normalise(text)
    if not needle:
        return True
    free_left, free_right = _cjk(needle[0]), _cjk(needle[-1])
    at = hay.find(needle)
    while at != -1:
        end = at + len(needle)
        if (free_left or at == 0 or hay[at - 1] == " " or _cjk(hay[at - 1])) and \
                (free_right or end == len(hay) or hay[end] == " " or _cjk(hay[end])):
            return True
        at = hay.find(needle, at + 1)
    return False


_TOKEN = re.compile(rf"[{_CJK}]+|[^\s{_CJK}]+")


def terms(text: str) -> list[str]:
    """Normalised words and CJK character bigrams, in order."""
    out = []
    for token in _TOKEN.findall(normalise(text)):
        if _CJK_RUN.match(token):
            out += [token[i : i + 2] for i in range(max(1, len(token) - 1))]
        else:
            out.append(token)
    return out


_NON_WORD_KEEP_LINES = re.compile(r"[^\w\n]+|_+")


def term_texts(texts: list[str]) -> list[str]:
    """`" ".join(terms(t))` for many texts at once: one normalising pass over all of them."""
    joined = unicodedata.normalize("NFKC", "\n".join(t.replace("\n", " ") for t in texts)).casefold()
    rows = _NON_WORD_KEEP_LINES.sub(" ", joined).split("\n")
    return [" ".join(terms(row)) if _CJK_RUN.search(row) else row for row in rows]


def names_and_numbers(text: str) -> list[str]:
    found, last_end = [], None
    for match in _WORD.finditer(text):
        word, gap = match.group(), text[last_end : match.start()] if last_end is not None else ""
        starts_sentence = last_end is None or bool(_SENTENCE_END.search(gap))
        last_end = match.end()
        core = word.split("'")[0]  # I'm, I'll: a pronoun, not a name
        name = len(core) > 1 and (core[1:] != core[1:].lower() or (core[0].isupper() and not starts_sentence))
        if name or _DIGIT.search(word):
            found.append(normalise(word))
    return found


@dataclass
class FactIndex:
    """Document frequencies of terms in the domain answers and in background text."""

    domain_df: Counter = field(default_factory=Counter)
    background_df: Counter = field(default_factory=Counter)
    n_background: int = 0
    n_domain: int = 0
    min_domain_df: int = 2
    max_background_share: float = 0.02
    max_rare: int = 3

    @classmethod
    def fit(cls, domain_answers: list[str], background: list[str] = (), **settings) -> FactIndex:
        domain_df = Counter(t for text in domain_answers for t in set(terms(text)))
        background_df = Counter(t for text in background for t in set(terms(text)))
        return cls(domain_df, background_df, len(background), len(domain_answers), **settings)

    def common_in_domain(self, term: str, share: float = 0.2) -> bool:
        """Is the term part of the domain's usual vocabulary (in at least `share` of its answers)?"""
        return self.n_domain > 0 and self.domain_df[term] >= share * self.n_domain

    def _rare(self, term: str) -> bool:
        long_enough = len(term) >= 4 or bool(_CJK_RUN.fullmatch(term))
        share = self.background_df[term] / self.n_background if self.n_background else 0.0
        return long_enough and self.domain_df[term] >= self.min_domain_df and share <= self.max_background_share

    def facts(self, answer: str) -> list[str]:
        """The answer's key facts, names and numbers first, then its recurring rare domain terms."""
        named = list(dict.fromkeys(names_and_numbers(answer)))
        rare = sorted({t for t in terms(answer) if t not in named and self._rare(t)},
                      key=lambda t: (-self.domain_df[t], -len(t), t))
        return named + rare[: self.max_rare]


def missing_facts(facts: list[str], answer: str) -> list[str]:
    """The facts the answer does not state."""
    return [f for f in facts if not present(f, answer)]


def fact_share(facts: list[str], answer: str, missing: list[str] | None = None) -> float:
    """Share of the facts present in the answer (1.0 when there are none to keep); `missing` if already known."""
    if not facts:
        return 1.0
    return 1 - len(missing_facts(facts, answer) if missing is None else missing) / len(facts)
