"""Per-sample metrics for the tunegate lm-eval tasks (referenced by `!function` in the YAMLs)."""

import json
import math
import re
import string
from collections import Counter

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u3000-\u303f\uff00-\uff0f\uff1a-\uff20]")
# CJK text has no spaces between words: score it per character.
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af])")


def _tokens(text: str) -> list[str]:
    return _CJK.sub(r" \1 ", _PUNCT.sub(" ", text.lower())).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _tokens(prediction), _tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def domain_results(doc: dict, results: list[str]) -> dict:
    prediction = results[0]
    contains = " ".join(_tokens(doc["reference"])) in " ".join(_tokens(prediction))
    return {"token_f1": token_f1(prediction, doc["reference"]), "contains": float(contains)}


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
