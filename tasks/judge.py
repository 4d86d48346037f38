"""Stage 6b, judge: a pairwise LLM judge of the candidate's and the champion's answers, in both orders.

    judge: {base_url: http://127.0.0.1:8000/v1, model: tunegate-model}      # in the config; off without it

Every generation-task prompt the two models answered is judged twice: candidate as A and champion
as B, then swapped. The candidate wins a pair only when both orders prefer it, loses only when both
prefer the champion; orders that disagree (the judge followed the position, not the answer) make a
tie, and their share is reported as position bias. The reply must be JSON with a verdict and a
reason, asked for as OpenAI structured outputs (`response_format` with the verdict's schema), so a
server that decodes under a schema always sends it; an endpoint that refuses response_format is
asked without it. An unparseable reply (or a failed request) is asked once more, then counted as
"no verdict": never a loss, and reported. Replies are cached by (question, both answers, judge model,
rubric), so an unchanged pair is never judged twice.

The result joins the evaluations as the task `judge`: per pair 1 (win), 0.5 (tie) or 0 (loss) for the
candidate, 0.5 for the champion (a model against itself ties), so the gate's paired test and rules
apply to `win_rate` as to any metric. The win rate's interval and a sign-test p-value are logged too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from prefect import task

from tasks.evaluate import Comparison, answered_by_both
from tunegate.config import JudgeConfig
from tunegate.models import cache_dir
from tunegate.stats import mcnemar_exact, paired_bootstrap

log = logging.getLogger(__name__)
VERDICTS = {"a": "A", "b": "B", "tie": "tie"}
OUTCOME = {"win": 1.0, "tie": 0.5, "loss": 0.0}
PROMPT = """{rubric}

Question:
{question}

Answer A:
{a}

Answer B:
{b}

Which answer is better? Reply with JSON only, no other text:
{{"verdict": "A" or "B" or "tie", "reason": "<why, in one short sentence>"}}"""
# Sent as OpenAI structured outputs, in the subset every provider enforces (all required, no extras, no
# length limits): a server that decodes under it (vLLM, OpenAI, tunegate serve-model) always sends valid JSON.
VERDICT_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["verdict", "reason"],
    "properties": {"verdict": {"type": "string", "enum": ["A", "B", "tie"]}, "reason": {"type": "string"}}}}}


def parse_verdict(text: str | None) -> dict | None:
    """{"verdict", "reason"} from the first JSON object in the reply that has a valid verdict, else None."""
    decoder = json.JSONDecoder()
    start = (text or "").find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and str(obj.get("verdict", "")).strip().lower() in VERDICTS:
            return {"verdict": VERDICTS[str(obj["verdict"]).strip().lower()], "reason": str(obj.get("reason", ""))[:300]}
        start = text.find("{", start + 1)
    return None


def combine(first: dict | None, second: dict | None) -> str:
    """The candidate's outcome from both orders: first has the candidate as A, second as B."""
    if first is None or second is None:
        return "no_verdict"
    as_a = {"A": "win", "B": "loss", "tie": "tie"}[first["verdict"]]
    as_b = {"A": "loss", "B": "win", "tie": "tie"}[second["verdict"]]
    return as_a if as_a == as_b else "tie"


def cache_key(cfg: JudgeConfig, question: str, a: str, b: str) -> str:
    # The prompt and the reply format belong to the rubric: changing either asks the judge again.
    return hashlib.sha256(json.dumps([cfg.model, cfg.rubric, PROMPT, VERDICT_FORMAT, question, a, b]).encode()
                          ).hexdigest()


class Judge:
    """One judge endpoint; asks for a verdict on one ordered pair, with one retry and a file cache."""

    def __init__(self, cfg: JudgeConfig, cache: Path):
        from openai import OpenAI

        self.cfg, self.cache = cfg, cache
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.client = OpenAI(base_url=cfg.base_url, api_key=key or "unused", timeout=cfg.timeout_s, max_retries=0)
        self.structured = cfg.structured_output  # off once the endpoint refuses response_format
        cache.mkdir(parents=True, exist_ok=True)

    def ask(self, prompt: str):
        """The judge's reply (a choice: message and finish_reason), under the verdict schema when accepted."""
        from openai import BadRequestError

        request = {"model": self.cfg.model, "temperature": 0, "max_tokens": self.cfg.max_tokens,
                   "messages": [{"role": "user", "content": prompt}]}
        if self.structured:
            try:
                return self.client.chat.completions.create(**request, response_format=VERDICT_FORMAT).choices[0]
            except BadRequestError as err:  # an endpoint without structured outputs; the prompt asks for JSON too
                reply = self.client.chat.completions.create(**request).choices[0]
                if self.structured:
                    log.warning("judge %s refused response_format (%s); asking for JSON in the prompt only",
                                self.cfg.model, str(err)[:200])
                self.structured = False  # only once a plain request went through: the 400 was about the format
                return reply
        return self.client.chat.completions.create(**request).choices[0]

    def verdict(self, question: str, a: str, b: str) -> dict:
        """{"verdict" | None, "reason", "attempts", "cached", "error"} for answers shown as A and B."""
        path = self.cache / f"{cache_key(self.cfg, question, a, b)}.json"
        if path.exists():
            return {**json.loads(path.read_text()), "cached": True}
        prompt = PROMPT.format(rubric=self.cfg.rubric, question=question, a=a, b=b)
        error = None
        for attempt in (1, 2):
            try:
                choice = self.ask(prompt)
            except Exception as err:  # a timeout or an HTTP error: asked once more, then no verdict
                error = type(err).__name__
                continue
            parsed = parse_verdict(choice.message.content)
            if parsed is not None:
                result = {**parsed, "attempts": attempt, "error": None}
                break
            # Cut at max_tokens mid-JSON: say so, since a larger judge.max_tokens is the cure.
            cut = choice.finish_reason == "length" and "{" in (choice.message.content or "")
            error = "truncated" if cut else "unparseable"
        else:
            result = {"verdict": None, "reason": "", "attempts": 2, "error": error}
        if result["error"] in (None, "unparseable", "truncated"):  # the judge's answer; never a failed request
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)
        return {**result, "cached": False}


def judged_pairs(evals: Comparison) -> list[dict]:
    """Every generation-task doc both models answered: (task, doc id, question, both answers)."""
    pairs = []
    for name, cand, base in answered_by_both(evals.candidate.tasks, evals.baseline.tasks):
        for doc_id, question, new, old in zip(cand["doc_ids"], cand["prompts"], cand["answers"], base["answers"]):
            pairs.append({"task": name, "doc_id": doc_id, "question": question, "candidate": new, "baseline": old})
    return pairs


def judge_summary(pairs: list[dict], cfg: JudgeConfig, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Counts, win rate with a 95% interval, sign-test p-value and position bias over judged pairs."""
    outcomes = [p["outcome"] for p in pairs]
    decided = np.array([OUTCOME[o] for o in outcomes if o != "no_verdict"], dtype=float)
    both = [p for p in pairs if p["outcome"] != "no_verdict" and "tie" not in (p["first"]["verdict"],
                                                                               p["second"]["verdict"])]
    same_position = sum(p["first"]["verdict"] == p["second"]["verdict"] for p in both)
    low = high = None
    if len(decided):
        low, high, _ = paired_bootstrap(decided - 0.5, n_bootstrap, seed, 0.05)
        low, high = low + 0.5, high + 0.5
    p_value, wins, losses = mcnemar_exact(decided - 0.5)  # exact sign test: wins vs losses, ties left out
    return {
        "judge": cfg.model, "pairs": len(pairs), "wins": wins, "losses": losses,
        "ties": outcomes.count("tie"), "no_verdict": outcomes.count("no_verdict"),
        "no_verdict_rate": outcomes.count("no_verdict") / len(pairs) if pairs else None,
        "win_rate": float(decided.mean()) if len(decided) else None, "ci_low": low, "ci_high": high,
        "sign_test_p": p_value,
        # Both orders named the same position (A/A or B/B): the judge followed the place, not the answer.
        "position_bias": same_position / len(both) if both else None,
        "retried": sum(v["attempts"] == 2 for p in pairs for v in (p["first"], p["second"])),
        "truncated": sum(v.get("error") == "truncated" for p in pairs for v in (p["first"], p["second"])),
        "cached": sum(v["cached"] for p in pairs for v in (p["first"], p["second"])),
    }


def judge_both_orders(evals: Comparison, cfg: JudgeConfig, cache: Path) -> list[dict]:
    """Every pair judged with the candidate as A, then as B; each pair gets its outcome for the candidate."""
    pairs = judged_pairs(evals)
    judge = Judge(cfg, cache)
    with ThreadPoolExecutor(max_workers=cfg.max_concurrency) as pool:
        firsts = list(pool.map(lambda p: judge.verdict(p["question"], p["candidate"], p["baseline"]), pairs))
        seconds = list(pool.map(lambda p: judge.verdict(p["question"], p["baseline"], p["candidate"]), pairs))
    for pair, first, second in zip(pairs, firsts, seconds):
        pair.update(first=first, second=second, outcome=combine(first if first["verdict"] else None,
                                                                second if second["verdict"] else None))
    return pairs


def with_judge(evals: Comparison, pairs: list[dict], cfg: JudgeConfig) -> tuple[Comparison, dict]:
    """The evaluations with the task `judge` added to both models, and the judge's summary."""
    summary = judge_summary(pairs, cfg)
    kept = [p for p in pairs if p["outcome"] != "no_verdict"]  # no verdict is no evidence either way
    common = {"doc_ids": [f"{p['task']}/{p['doc_id']}" for p in kept], "higher_is_better": {"win_rate": True},
              "definition_hash": cache_key(cfg, "", "", ""), "data_hash": evals.candidate.model_hash,
              "limit": None, "footing": {"judge": cfg.model}, "strata": [p["task"] for p in kept]}
    # Only what was measured: no win rate without a verdict, no no-verdict rate without a pair.
    measured = {**({"win_rate": summary["win_rate"]} if kept else {}),
                **({"no_verdict_rate": summary["no_verdict_rate"]} if pairs else {})}
    cand = {**common, "metrics": measured,
            "samples": {"win_rate": [OUTCOME[p["outcome"]] for p in kept]}, "judge": summary,
            "verdicts": [{k: p[k] for k in ("task", "doc_id", "outcome")} | {
                "reason_a_first": p["first"]["reason"], "reason_b_first": p["second"]["reason"]} for p in pairs]}
    base = {**common, "metrics": {**measured, **({"win_rate": 0.5} if kept else {})},
            "samples": {"win_rate": [0.5] * len(kept)}}
    return evals.model_copy(update={
        "candidate": evals.candidate.model_copy(update={"tasks": {**evals.candidate.tasks, "judge": cand}}),
        "baseline": evals.baseline.model_copy(update={"tasks": {**evals.baseline.tasks, "judge": base}}),
    }), summary


@task
def judge(evals: Comparison, cfg: JudgeConfig | None) -> Comparison:
    """Add the pairwise judge's win rate to the evaluations; skipped, with a log line, without a judge config."""
    if cfg is None:
        log.info("judge skipped: no `judge:` section in the config")
        return evals
    judged, summary = with_judge(evals, judge_both_orders(evals, cfg, cache_dir() / "judge-cache"), cfg)
    log.info("judge %s: %d pairs, %d wins, %d ties, %d losses, %d no verdict (%d retried), win rate %s, "
             "sign test p=%.3g, position bias %s", cfg.model, summary["pairs"], summary["wins"], summary["ties"],
             summary["losses"], summary["no_verdict"], summary["retried"], summary["win_rate"],
             summary["sign_test_p"], summary["position_bias"])
    if summary["truncated"]:
        log.warning("judge: %d replies were cut at judge.max_tokens=%d before their JSON ended; raise it",
                    summary["truncated"], cfg.max_tokens)
    return judged
