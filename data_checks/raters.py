"""Rater agreement for one feedback window: who rates like the rest, and whose feedback rows to set aside.

    python -m data_checks.raters OUT/WINDOW/window_ratings.jsonl   # alpha and each user's agreement, as JSON

Input: the window's ratings (tasks/feedback.py `window_ratings`: one up/down per user and answer, with
the reward model's `reward_score` when retrain-from-feedback had a registered one), and optionally
reference answers (curated rows, production-set references) with the key-fact index validate builds.

The unit is an answer (its conversation and its text), not a prompt: a rating judges one answer, and
two users who upvote the right answer and downvote a wrong one to the same prompt agree, which a
per-prompt unit would count as a disagreement.

- alpha: Krippendorff's alpha (nominal, up/down; the `krippendorff` library) over the answers that two
  or more users rated; None, with the reason, when no answer has two raters or every such rating is the
  same (alpha is then 0/0).
- per user, each number with its n:
  - consensus: on each answer they rated that others rated too, the trust-weighted share of the other
    raters who voted the same way (leave-one-out: a user never agrees with themselves);
  - reward: an upvote agrees when the reward model scores the answer above the window's mean rated
    answer, a downvote when below (only with scores);
  - reference: an upvote agrees when the answer keeps the key facts of the closest reference, a downvote
    when it contradicts it (data_checks/contradiction.py, the same test validate runs); answers to
    prompts no reference covers are not compared;
  - combined: every comparison of the user pooled; its n is the user's ratings with any comparison.
- trust: the combined agreement smoothed toward 1/2, (agree + 1) / (n + 2), so a handful of ratings says
  little; a rater's say in the others' consensus is 2 * trust - 1, none at or below a coin toss. Trust is
  recomputed from the consensus until it settles (every rater has the same say in the first round):
  accounts that vote together against the references or the reward model lose their say, so however many
  they are, they do not define the consensus on the answers they rated. Without references or scores the
  consensus is all there is, and a majority of raters that agree wins: the references and the reward model
  are what a coordinated majority cannot outvote.
- flagged: at least `checks.rater_min_ratings` comparable ratings and a combined agreement more than
  `checks.rater_max_gap` below the median user's, the median taken over the judged users with a say (four
  coordinated accounts among six raters would otherwise be the median).

Ratings without a user (a log that records none) count for nobody: not in alpha, never flagged. A feedback
row is `rater_outlier` when every rating it came from is a flagged user's; its detail names the users and
their numbers, never the row's text.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import krippendorff
import numpy as np
import pandas as pd

from data_checks import contradiction
from data_checks.facts import FactIndex
from data_checks.leakage import prompt_text
from tunegate.config import ChecksConfig

RULES = {"rater_outlier": "no feedback row comes only from raters who disagree with the rest (flagged raters)"}
EVIDENCE = ("consensus", "reward", "reference")


def unit_key(conversation: list[dict], answer: str) -> str:
    """A rated answer's identity: its conversation and its text, case and spacing folded."""
    turns = json.dumps([[m.get("role"), m.get("content")] for m in conversation], ensure_ascii=False)
    return " ".join(f"{turns}\n{answer}".lower().split())


def latest_votes(ratings: list[dict]) -> tuple[dict[str, dict[str, bool]], dict[str, dict]]:
    """(user -> answer -> upvoted, each user's latest rating of an answer; answer -> one of its rating rows)."""
    votes: dict[str, dict[str, bool]] = {}
    units: dict[str, dict] = {}
    for r in sorted(ratings, key=lambda r: r.get("timestamp") or ""):
        key = unit_key(r["conversation"], r["answer"])
        if r.get("reward_score") is not None or key not in units:
            units[key] = r
        if r.get("user") is not None:  # raters, not ratings: a second vote replaces the first
            votes.setdefault(str(r["user"]), {})[key] = r["rating"] == "up"
    return votes, units


def raters_by_answer(votes: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    by_unit: dict[str, dict[str, bool]] = {}
    for user, theirs in votes.items():
        for key, up in theirs.items():
            by_unit.setdefault(key, {})[user] = up
    return by_unit


def krippendorff_alpha(by_unit: dict[str, dict[str, bool]]) -> dict:
    """Nominal alpha over the answers with two or more raters; None and why when it is not defined."""
    shared = [k for k, raters in by_unit.items() if len(raters) >= 2]
    users = sorted({u for k in shared for u in by_unit[k]})
    out = {"alpha": None, "answers": len(shared), "raters": len(users)}
    if not shared:
        return {**out, "why": "no answer was rated by two users"}
    matrix = np.full((len(users), len(shared)), np.nan)
    row = {u: i for i, u in enumerate(users)}
    for j, k in enumerate(shared):
        for u, up in by_unit[k].items():
            matrix[row[u], j] = float(up)
    if len(np.unique(matrix[~np.isnan(matrix)])) < 2:
        return {**out, "why": "every rating of a shared answer is the same, so alpha is 0/0"}
    return {**out, "alpha": float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))}


def reward_verdicts(units: dict[str, dict]) -> dict[str, bool]:
    """Per scored answer: True above the window's mean score, False below (at the mean: no verdict). Not the median:
    when most answers are alike (right, scored alike) the median is their score, and they would get no verdict."""
    scores = {k: float(r["reward_score"]) for k, r in units.items() if r.get("reward_score") is not None}
    if len(scores) < 2:
        return {}
    mean = float(np.mean(list(scores.values())))
    return {k: s > mean for k, s in scores.items() if not np.isclose(s, mean)}


def answer_record(rating: dict, line: int) -> dict:
    return {"messages": [*rating["conversation"], {"role": "assistant", "content": rating["answer"]}],
            "source": {"file": "window ratings", "line": line}}


def reference_verdicts(units: dict[str, dict], references: list[dict], facts: FactIndex | None,
                       checks: ChecksConfig) -> dict[str, bool]:
    """Per answer whose prompt a reference covers: True when it keeps the reference's key facts, False when it
    contradicts them; the contradiction suite's own test, so a vote is judged as validate judges a row."""
    if not references or facts is None or not units:
        return {}
    keys = list(units)
    records = [answer_record(units[k], i) for i, k in enumerate(keys, 1)]
    prompts = [prompt_text(r) for r in references] + [prompt_text(r) for r in records]
    match, _ = contradiction.closest_curated(prompts, np.arange(len(prompts)) < len(references),
                                             checks.conflict_prompt_similarity)
    covered = np.flatnonzero(match[len(references):] >= 0)
    if not len(covered):
        return {}
    frame, _, _ = contradiction.detect([records[i] for i in covered], references, facts,
                                       checks.conflict_prompt_similarity, checks.conflict_min_fact_share)
    return {keys[i]: not bool(bad) for i, bad in zip(covered, frame["conflicts_with_curated"])}


@dataclass
class Tally:
    """One user's comparisons: per kind of evidence, how much agreed (a consensus share may be fractional) of n."""

    agree: dict[str, float]
    n: dict[str, int]
    comparable: int

    @property
    def combined(self) -> float | None:
        n = sum(self.n.values())
        return sum(self.agree.values()) / n if n else None

    @property
    def trust(self) -> float:
        return (sum(self.agree.values()) + 1) / (sum(self.n.values()) + 2)


def say(trust: float) -> float:
    """A rater's weight in the others' consensus: none at or below a coin toss, 1 when always in agreement."""
    return max(0.0, 2 * trust - 1)


def tally(user: str, theirs: dict[str, bool], by_unit: dict, weight: dict[str, float],
          verdicts: dict[str, dict[str, bool]]) -> Tally:
    agree, n, comparable = dict.fromkeys(EVIDENCE, 0.0), dict.fromkeys(EVIDENCE, 0), 0
    for key, up in theirs.items():
        others = [(weight[v], vote == up) for v, vote in by_unit[key].items() if v != user]
        total = sum(w for w, _ in others)
        compared = total > 0  # other raters who all lack a say are no consensus
        if compared:
            agree["consensus"] += sum(w for w, same in others if same) / total
            n["consensus"] += 1
        for kind in ("reward", "reference"):
            if key in verdicts[kind]:
                agree[kind] += verdicts[kind][key] == up
                n[kind] += 1
                compared = True
        comparable += compared
    return Tally(agree, n, comparable)


def settle_trust(votes, by_unit, verdicts, rounds: int = 100, tolerance: float = 1e-6) -> tuple[dict, int]:
    """Each user's tally once trust stops moving (or after `rounds`), and the rounds it took; in the first round
    every rater has the same say."""
    weight, trust = dict.fromkeys(votes, 1.0), dict.fromkeys(votes, 1.0)
    for done in range(1, rounds + 1):
        tallies = {u: tally(u, theirs, by_unit, weight, verdicts) for u, theirs in votes.items()}
        moved = max((abs(t.trust - trust[u]) for u, t in tallies.items()), default=0.0)
        trust = {u: t.trust for u, t in tallies.items()}
        weight = {u: say(t) for u, t in trust.items()}
        if moved < tolerance:
            break
    return tallies, done


def rater_agreement(ratings: list[dict], checks: ChecksConfig, references: list[dict] | None = None,
                    facts: FactIndex | None = None) -> dict:
    """Alpha, each user's agreement (consensus, reward, reference, combined; each with n), trust and flags."""
    votes, units = latest_votes(ratings)
    by_unit = raters_by_answer(votes)
    verdicts = {"reward": reward_verdicts(units), "reference": reference_verdicts(units, references or [], facts, checks)}
    tallies, rounds = settle_trust(votes, by_unit, verdicts)
    judged = {u: t for u, t in tallies.items() if t.comparable >= checks.rater_min_ratings and t.combined is not None}
    # The bar is the median of the judged users who have a say: accounts that agree with the evidence less often
    # than not never set it, however many they are.
    credible = [t.combined for t in judged.values() if say(t.trust) > 0]
    bar = float(np.median(credible)) if len(judged) >= 2 and credible else None  # one user is far from no one
    flagged = sorted(u for u, t in judged.items() if bar is not None and bar - t.combined > checks.rater_max_gap)
    users = [{"user": u, "ratings": len(votes[u]), "comparable": t.comparable,
              **{kind: {"agreement": t.agree[kind] / t.n[kind] if t.n[kind] else None, "n": t.n[kind]}
                 for kind in EVIDENCE},
              "combined": t.combined, "trust": t.trust, "say": say(t.trust), "judged": u in judged, "flagged": u in flagged}
             for u, t in sorted(tallies.items(), key=lambda x: (x[1].combined is None, x[1].combined or 0.0, x[0]))]
    return {"ratings": len(ratings), "unattributed": sum(r.get("user") is None for r in ratings),
            "answers": len(units), "users": users, "judged": len(judged), "flagged": flagged,
            "median_agreement": bar, "min_ratings": checks.rater_min_ratings, "max_gap": checks.rater_max_gap,
            "evidence": {kind: len(v) for kind, v in verdicts.items()}, "rounds": rounds,
            **{"alpha" if k == "alpha" else f"alpha_{k}": v for k, v in krippendorff_alpha(by_unit).items()}}


def contributors(row: dict, sources: list[str], ratings_by_source: dict[str, list[dict]]) -> set:
    """The users whose ratings made a feedback training row (tasks/feedback.py training_rows): among the ratings
    of its sources, those whose answer or correction it holds. A trace's source is shared by everyone who rated
    it, so the text decides; when no text matches, every rater of the sources counts."""
    behind = [r for s in sources for r in ratings_by_source.get(s, [])]
    if "messages" in row:
        answer = row["messages"][-1]["content"]
        made = [r for r in behind if (r["rating"] == "up" and r["answer"] == answer)
                or (r.get("correction") or "").strip() == answer]
    else:
        chosen, rejected = row["preferred_output"][-1]["content"], row["non_preferred_output"][-1]["content"]
        made = [r for r in behind if (r["rating"] == "up" and r["answer"] == chosen)
                or (r["rating"] == "down" and r["answer"] == rejected)
                or ((r.get("correction") or "").strip() == chosen and r["answer"] == rejected)]
    return {r.get("user") for r in made or behind}


def detect(rows: list[dict], feedback_rows: list[dict | None], ratings: list[dict],
           agreement: dict) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Flag the rows whose feedback training row (None: not feedback) came only from flagged raters."""
    flagged = {u["user"]: u for u in agreement["users"] if u["flagged"]}
    by_source: dict[str, list[dict]] = {}
    for r in ratings:
        by_source.setdefault(r["source"], []).append(r)
    flags = np.zeros(len(rows), dtype=bool)
    details: list[dict[str, str]] = [{} for _ in rows]
    for i, fb in enumerate(feedback_rows):
        if not flagged or fb is None or not fb.get("feedback_sources"):
            continue
        users = contributors(fb, fb["feedback_sources"], by_source)
        if users and all(u in flagged for u in users):
            flags[i] = True
            details[i]["rater_outlier"] = "only from flagged raters " + "; ".join(
                f"{u} (agreement {flagged[u]['combined']:.2f} on {flagged[u]['comparable']} ratings, median user "
                f"{agreement['median_agreement']:.2f}, allowed gap {agreement['max_gap']})" for u in sorted(users))
    return pd.DataFrame({"rater_outlier": flags}), details


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(rater_agreement([json.loads(x) for x in f if x.strip()], ChecksConfig()), indent=2))
