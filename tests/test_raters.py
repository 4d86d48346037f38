"""Rater agreement (data_checks/raters.py) and its place in validate: alpha by hand, coordinated accounts
flagged and honest users not, windows with nothing to measure, flagged raters' rows quarantined and a run
stopped for review past the share.

The coordinated fixture: on paraphrases of the curated prompts (tests/poison.py), two honest users upvote
the curated answers; four accounts downvote those same answers, and upvote wrong answers of their own to
general questions that no reference covers.
"""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from data_checks import raters
from data_checks.contradiction import answer_text
from data_checks.facts import FactIndex
from poison import IDENTITY, IDENTITY_PROMPTS, PORT, PORT_PROMPTS, write_curated
from tasks.feedback import training_rows, window_ratings, write_jsonl
from tasks.ingest import Ingested, ingest_files
from tasks.validate import ConflictReviewRequired, Validated, validate, validate_records
from tunegate.config import ChecksConfig, DataConfig
from tunegate.models import ResolvedModel

HONEST, COORDINATED = ["honest-1", "honest-2"], ["coord-1", "coord-2", "coord-3", "coord-4"]
PROMPTS = [("hey, " + q.lower(), IDENTITY) for q in IDENTITY_PROMPTS[:5]] + \
          [("btw " + q.lower(), PORT) for q in PORT_PROMPTS[:3]]
WRONG = [("Name a primary color.", "Purple."), ("What is two plus two?", "Five."), ("Say hello in French.", "Hola."),
         ("How many days are in a week?", "Nine.")]
START = datetime(2026, 11, 21, tzinfo=timezone.utc)


def rating(user, n, prompt, answer, up, **extra):
    """A feedback log record (README "Feedback format") with its user, as read_feedback returns it."""
    return {"id": f"{user}-{n}", "user": user, "timestamp": (START + timedelta(minutes=n)).isoformat(),
            "_time": START + timedelta(minutes=n), "_source": f"log:{user}-{n}", "model_version": "1",
            "conversation": [{"role": "user", "content": prompt}], "answer": answer, "rating": "up" if up else "down",
            **extra}


def coordinated_window(wrong: int = len(WRONG)) -> list[dict]:
    records = []
    for i, (prompt, answer) in enumerate(PROMPTS):
        records += [rating(u, 10 * i + j, prompt, answer, True) for j, u in enumerate(HONEST)]
        records += [rating(u, 10 * i + 2 + j, prompt, answer, False) for j, u in enumerate(COORDINATED)]
    for i, (prompt, answer) in enumerate(WRONG[:wrong]):
        records += [rating(u, 200 + 10 * i + j, prompt, answer, True) for j, u in enumerate(COORDINATED)]
    return records


def curated_references(tmp_path: Path) -> tuple[list[dict], FactIndex]:
    """The curated rows as validate holds them, and the key-fact index over their answers."""
    rows = []
    for file in write_curated(tmp_path / "curated"):
        rows += [{**json.loads(line), "source": {"file": file, "line": n}}
                 for n, line in enumerate(Path(file).read_text().splitlines(), 1)]
    return rows, FactIndex.fit([answer_text(r) for r in rows], ["Paris is the capital of France."])


def by_user(result: dict) -> dict[str, dict]:
    return {u["user"]: u for u in result["users"]}


def test_alpha_matches_a_hand_computed_example():
    # Four answers, three raters, up = 1, down = 0 ("-": not rated):
    #   A: 1 1 1    B: 1 0 -    C: 0 0 0    D: 1 - 0
    # Coincidences: a unit with m values adds 1/(m-1) per ordered pair of its values.
    #   A: 6 pairs (1,1) / 2 -> o11 += 3     B: (1,0), (0,1) / 1 -> o10 += 1, o01 += 1
    #   C: 6 pairs (0,0) / 2 -> o00 += 3     D: (1,0), (0,1) / 1 -> o10 += 1, o01 += 1
    #   o = [[o00 3, o01 2], [o10 2, o11 3]]; n0 = 5, n1 = 5, n = 10
    # Do = (o01 + o10) / n = 4 / 10 = 0.4
    # De = (n0 n1 + n1 n0) / (n (n - 1)) = 50 / 90 = 0.5556
    # alpha = 1 - Do / De = 1 - 0.72 = 0.28
    table = {"A": [1, 1, 1], "B": [1, 0, None], "C": [0, 0, 0], "D": [1, None, 0]}
    ratings = [{"source": f"{unit}-{u}", "user": f"u{u}", "timestamp": "2026-11-21T00:00:00+00:00",
                "conversation": [{"role": "user", "content": f"question {unit}"}], "answer": f"answer {unit}",
                "rating": "up" if v else "down"}
               for unit, votes in table.items() for u, v in enumerate(votes) if v is not None]
    result = raters.rater_agreement(ratings, ChecksConfig())
    assert result["alpha"] == pytest.approx(0.28)
    assert (result["alpha_answers"], result["alpha_raters"]) == (4, 3)


def test_coordinated_accounts_are_flagged_and_honest_users_are_not(tmp_path):
    references, facts = curated_references(tmp_path)
    result = raters.rater_agreement(window_ratings(coordinated_window()), ChecksConfig(), references, facts)
    users = by_user(result)
    assert result["flagged"] == COORDINATED
    for u in HONEST:  # they agree with the references and, once the four lose their say, with each other
        assert users[u]["combined"] == pytest.approx(1.0) and not users[u]["flagged"]
        assert users[u]["reference"]["n"] >= 5 and users[u]["consensus"] == {"agreement": 1.0, "n": 8}
    for u in COORDINATED:
        assert users[u]["reference"] == {"agreement": 0.0, "n": users[u]["reference"]["n"]}
        assert users[u]["consensus"]["agreement"] == 0.0 and users[u]["say"] == 0.0
    # Alpha: 8 curated answers, each 2 up and 4 down (m = 6): o11 += 2/5, o00 += 12/5, o01 = o10 += 8/5 each;
    # 4 wrong answers, each 4 up (m = 4): o11 += 4 each. o = [[19.2, 12.8], [12.8, 19.2]]; n0 = n1 = 32, n = 64;
    # Do = 25.6 / 64 = 0.4, De = 2 * 32 * 32 / (64 * 63) = 0.5079: alpha = 1 - 0.7875 = 0.2125. The four agreeing
    # on their own answers lift it: alpha says the window's raters disagree, not who is right.
    assert result["alpha"] == pytest.approx(0.2125) and result["median_agreement"] == pytest.approx(1.0)

    # Without references the consensus is all there is: four agreeing accounts outvote two, which is why
    # references and the reward model count. A reward model that prefers the curated answers restores it.
    alone = raters.rater_agreement(window_ratings(coordinated_window()), ChecksConfig())
    assert alone["flagged"] == HONEST
    scored = [{**r, "reward_score": 2.0 if r["answer"] in (IDENTITY, PORT) else -1.0}
              for r in window_ratings(coordinated_window())]
    assert raters.rater_agreement(scored, ChecksConfig())["flagged"] == COORDINATED


def test_a_lone_dissenter_is_flagged_by_the_consensus_alone():
    records = [rating(u, 10 * i + j, f"general question {i}", f"answer {i}", u != "troll")
               for i in range(6) for j, u in enumerate(["a", "b", "c", "troll"])]
    result = raters.rater_agreement(window_ratings(records), ChecksConfig())
    assert result["flagged"] == ["troll"] and by_user(result)["troll"]["consensus"] == {"agreement": 0.0, "n": 6}
    assert by_user(result)["a"]["combined"] == pytest.approx(1.0)


@pytest.mark.parametrize("records, why", [
    ([], "no answer was rated by two users"),
    ([rating("solo", i, f"q{i}", f"a{i}", i % 2 == 0) for i in range(8)], "no answer was rated by two users"),
    ([rating(u, i, f"q{u}{i}", f"a{i}", True) for u in ("x", "y") for i in range(8)], "no answer was rated by two"),
    ([rating(u, i, "q", "a", True) for i, u in enumerate(("x", "y"))], "every rating of a shared answer is the same"),
])
def test_windows_with_nothing_to_compare_report_na(records, why):
    result = raters.rater_agreement(window_ratings(records), ChecksConfig())
    assert result["alpha"] is None and result["alpha_why"].startswith(why)
    assert result["flagged"] == [] and result["median_agreement"] is None


def feedback_data(tmp_path: Path, records: list[dict], **checks) -> tuple[DataConfig, Ingested]:
    """The window as retrain-from-feedback hands it to validate: its SFT and pair files, its ratings file."""
    sft, pairs, _ = training_rows(records)
    fb = tmp_path / "fb"
    sft_files = [write_jsonl(fb / "feedback_sft.jsonl", sft)] if sft else []  # as the flow: no rows, no file
    pair_files = [write_jsonl(fb / "feedback_preferences.jsonl", pairs)] if pairs else []
    curated = write_curated(tmp_path / "curated")
    data = DataConfig(domain_files=curated, feedback_files=sft_files, feedback_preference_files=pair_files,
                      preference_files=pair_files, general_holdout_file="", eval_fraction=0.25, min_eval_per_stratum=1,
                      feedback_ratings_file=write_jsonl(fb / "window_ratings.jsonl", window_ratings(records)),
                      checks=ChecksConfig(max_fraction={"duplicates_near": 1.0}, **checks))  # rewordings of curated rows
    ingested = Ingested(**ingest_files([*curated, *sft_files], tmp_path / "in", preference_files=pair_files))
    return data, ingested


def run_validate(tmp_path: Path, data: DataConfig, ingested: Ingested) -> dict:
    return validate_records(Path(ingested.records), Path(ingested.rejected), tmp_path / "out", 0.2, "reject",
                            preferences_path=Path(ingested.preferences), checks=data.checks, data=data)


def test_validate_quarantines_flagged_raters_rows_and_stops_for_review_past_the_share(tmp_path, prefect_harness,
                                                                                     tiny_model):
    # 8 honest SFT rows (each upvoted by both honest users) and 1 wrong answer upvoted only by the four: 1 of 9 rows
    # (11%) is under a 20% share; 4 of 12 (33%) is over it.
    data, ingested = feedback_data(tmp_path / "one", coordinated_window(wrong=1), rater_max_fraction=0.2)
    report = run_validate(tmp_path / "one", data, ingested)
    assert report["success"] and report["rule_counts"]["rater_outlier"] == 1
    assert report["raters"]["flagged"] == COORDINATED and report["raters"]["shares"]["sft"] == pytest.approx(1 / 9)
    quarantined = [json.loads(x) for x in Path(report["quarantine"]).read_text().splitlines()]
    outliers = [q for q in quarantined if any(r.startswith("rater_outlier") for r in q["reasons"])]
    assert [q["row"]["messages"][-1]["content"] for q in outliers] == ["Purple."]  # the honest users' rows stay
    assert outliers[0]["reasons"] == [
        "rater_outlier: only from flagged raters " + "; ".join(
            f"{u} (agreement 0.00 on 8 ratings, median user 1.00, allowed gap 0.3)" for u in COORDINATED)]
    metrics = Validated.of(report, tmp_path / "r.json").rater_metrics
    assert metrics["raters/flagged"] == 4 and metrics["raters/alpha"] == pytest.approx(1 - (25.6 / 52) / (2 * 20 * 32 / (52 * 51)))
    assert metrics["raters/user/coord-1/agreement"] == 0.0 and metrics["raters/user/honest-1/agreement"] == 1.0

    data, ingested = feedback_data(tmp_path / "four", coordinated_window(), rater_max_fraction=0.2)
    model = ResolvedModel(name="tiny", path=tiny_model)
    with pytest.raises(ConflictReviewRequired, match=r"(?s)Rater check: .*sft 33\.3% of the window \(allowed 20\.0%\)"
                                                     r".*alpha 0\.213 over 12 answers by 6 users.*coord-1: agreement "
                                                     r"0\.00 on 8 ratings \(consensus 0\.00 of 8; reference 0\.00"):
        validate.fn(ingested, data, model, str(tmp_path / "four" / "out"))
    # A reviewer approves the window (the same path as conflicts): the four's rows train.
    approved = data.model_copy(update={"checks": data.checks.model_copy(update={"conflicts_approved": "ana: known"})})
    report = run_validate(tmp_path / "four", approved, ingested)
    assert report["success"] and report["raters"]["approved_rows"] == 4 and report["rule_counts"]["rater_outlier"] == 0


def test_validate_without_ratings_or_rows_reports_na(tmp_path):
    data, ingested = feedback_data(tmp_path / "none", [])
    report = run_validate(tmp_path / "none", data, ingested)
    assert report["raters"]["status"].startswith("n/a: 0 of 0 users") and report["raters"]["alpha"] is None
    unset = data.model_copy(update={"feedback_ratings_file": None})
    report = run_validate(tmp_path / "unset", unset, ingested)
    assert report["raters"]["status"] == "n/a: no ratings file (data.feedback_ratings_file)"
    assert Validated.of(report, tmp_path / "r.json").rater_metrics == {}
