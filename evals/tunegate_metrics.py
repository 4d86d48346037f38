"""Per-sample metrics for the tunegate lm-eval tasks (referenced by `!function` in the YAMLs).

lm-eval loads this file on its own, by path, from the materialized task folder: it imports nothing
from tunegate. What a metric needs from the config (key-fact terms, assertion checks) is written
into the docs by tasks/evaluate.py.

Key facts. A doc may carry `facts` (key-fact strings of its reference, written by prepare),
`must_include` and `must_not_include` (from `eval.key_facts` in the config). Text is normalised
(NFKC, casefold, every run of non-word characters -> one space); a fact is present when its
normalised form occurs in the normalised answer as whole words: a space or the start/end of the
text on each side, except next to CJK characters, which need no boundary (CJK has no spaces).
data_checks/facts.py implements the same matching; keep the two in step.
"""

import json
import math
import re
import string
import unicodedata
from collections import Counter

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u3000-\u303f\uff00-\uff0f\uff1a-\uff20]")
# CJK text has no spaces between words: score it per character.
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_CJK = re.compile(f"([{_CJK_CHARS}])")
_NON_WORD = re.compile(r"[^\w]+")


def _tokens(text: str) -> list[str]:
    return _CJK.sub(r" \1 ", _PUNCT.sub(" ", text.lower())).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _tokens(prediction), _tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_for_facts(text: str) -> str:
    """NFKC, casefold, and every run of non-word characters replaced by one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def has_fact(text: str, fact: str) -> bool:
    """True when fact occurs in text as whole words (CJK needs no word boundaries); see the module docstring."""
    needle = normalize_for_facts(fact)
    if not needle:
        return False
    # Not preceded / followed by a character other than a space or a CJK character: that covers the start and
    # end of the text, a space, and CJK on the text's side; a CJK first/last character of the fact needs nothing.
    left = "" if _CJK.match(needle[0]) else f"(?<![^ {_CJK_CHARS}])"
    right = "" if _CJK.match(needle[-1]) else f"(?![^ {_CJK_CHARS}])"
    return re.search(left + re.escape(needle) + right, normalize_for_facts(text)) is not None


def doc_facts(doc: dict) -> list[str]:
    """The doc's key facts: its own (`facts`) plus the eval set's `must_include` terms, once each."""
    seen, facts = set(), []
    for fact in list(doc.get("facts") or []) + list(doc.get("must_include") or []):
        key = normalize_for_facts(fact)
        if key and key not in seen:
            seen.add(key)
            facts.append(fact)
    return facts


def key_facts(prediction: str, doc: dict) -> float:
    """Share of the doc's key facts present in the answer; 1.0 when the doc has none (nothing to miss)."""
    facts = doc_facts(doc)
    if not facts:
        return 1.0
    return sum(has_fact(prediction, f) for f in facts) / len(facts)


def forbidden_terms(prediction: str, doc: dict) -> list[str]:
    """must_not_include terms in the answer that the reference does not have (it may: "我不是 ChatGPT")."""
    return [t for t in doc.get("must_not_include") or []
            if has_fact(prediction, t) and not has_fact(doc["reference"], t)]


def domain_results(doc: dict, results: list[str]) -> dict:
    prediction = results[0]
    return {
        "token_f1": token_f1(prediction, doc["reference"]),
        "key_facts": key_facts(prediction, doc),
        "no_forbidden": float(not forbidden_terms(prediction, doc)),
    }


def general_results(doc: dict, results: list[tuple[float, bool]]) -> dict:
    loglikelihood, _ = results[0]
    n_bytes = max(len(doc["reference"].encode("utf-8")), 1)
    return {"bits_per_byte": -loglikelihood / (n_bytes * math.log(2))}


def parse_json_container(text: str):
    """The JSON object or array that text is, as a whole; None when it is anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def format_results(doc: dict, results: list[str]) -> dict:
    answer = parse_json_container(results[0].strip())
    return {
        "valid_json": float(answer is not None),
        "json_match": float(answer is not None and answer == parse_json_container(doc["reference"])),
    }


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def assertion_passes(answer: str, kind: str, value: str) -> bool:
    """One promptfoo-style check of an answer. contains/regex are case-sensitive; icontains folds case (NFKC)."""
    if kind == "contains":
        return value in answer
    if kind == "not_contains":
        return value not in answer
    if kind == "icontains":
        return _fold(value) in _fold(answer)
    if kind == "not_icontains":
        return _fold(value) not in _fold(answer)
    if kind == "regex":
        return re.search(value, answer) is not None
    if kind == "not_regex":
        return re.search(value, answer) is None
    if kind == "is_json":
        return parse_json_container(answer.strip()) is not None
    raise ValueError(f"unknown assertion type {kind!r}")


def assertion_results(doc: dict, results: list[str]) -> dict:
    return {"pass": float(assertion_passes(results[0], doc["type"], doc["value"]))}
