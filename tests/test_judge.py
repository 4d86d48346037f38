"""The pairwise judge: both orders, ties on disagreement, no verdict is never a loss, the gate on its win rate."""

import pytest

from live_stack import serving
from tasks.evaluate import Comparison, Evaluation
from tasks.gate import decide
from tasks.judge import Judge, combine, judge_both_orders, judge_summary, parse_verdict, with_judge
from tasks.promote import promote_version
from test_serve import NAME, register_adapter
from tunegate.config import GateConfig, GateRule, JudgeConfig, TrackingConfig

CFG = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="judge-model")


def test_replies_are_read_as_json_verdicts_or_not_at_all():
    assert parse_verdict('{"verdict": "A", "reason": "correct port"}') == {"verdict": "A", "reason": "correct port"}
    assert parse_verdict('Sure! ```json\n{"verdict": "tie", "reason": "both fine"}\n```') == {
        "verdict": "tie", "reason": "both fine"}
    assert parse_verdict('{"note": 1} then {"verdict": " b "}') == {"verdict": "B", "reason": ""}
    for bad in (None, "", "A is better", '{"verdict": "C"}', '{"verdict": "A"', "[1, 2]"):
        assert parse_verdict(bad) is None, bad


def v(verdict):
    return {"verdict": verdict, "reason": "", "attempts": 1, "cached": False}


def test_a_win_needs_both_orders_and_a_disagreement_is_a_tie():
    assert combine(v("A"), v("B")) == "win"  # candidate preferred as A and as B
    assert combine(v("B"), v("A")) == "loss"
    assert combine(v("A"), v("A")) == "tie"  # the judge followed position A, not the answer
    assert combine(v("B"), v("B")) == "tie"
    assert combine(v("tie"), v("A")) == "tie"
    assert combine(None, v("B")) == "no_verdict" and combine(v("A"), None) == "no_verdict"  # never a loss


def pairs_with(outcomes: list[tuple[str | None, str | None]]) -> list[dict]:
    pairs = []
    for i, (first, second) in enumerate(outcomes):
        a = v(first) if first else {"verdict": None, "reason": "", "attempts": 2, "cached": False}
        b = v(second) if second else {"verdict": None, "reason": "", "attempts": 2, "cached": False}
        pairs.append({"task": "tunegate_domain", "doc_id": i, "question": f"q{i}", "candidate": "c", "baseline": "b",
                      "first": a, "second": b, "outcome": combine(a if first else None, b if second else None)})
    return pairs


def test_win_rate_interval_sign_test_and_position_bias():
    # 8 wins, 2 losses, 2 position-following ties, 3 without a verdict.
    pairs = pairs_with([("A", "B")] * 8 + [("B", "A")] * 2 + [("A", "A"), ("B", "B")] + [(None, "B")] * 3)
    s = judge_summary(pairs, CFG)
    assert (s["pairs"], s["wins"], s["losses"], s["ties"], s["no_verdict"]) == (15, 8, 2, 2, 3)
    assert s["win_rate"] == pytest.approx(9 / 12)  # (8 + 0.5 * 2) / 12 decided pairs; no verdict left out
    assert s["sign_test_p"] == pytest.approx(0.109375)  # exact binomial, 8 vs 2
    assert s["position_bias"] == pytest.approx(2 / 12) and s["no_verdict_rate"] == pytest.approx(0.2)
    assert s["ci_low"] < s["win_rate"] < s["ci_high"] and s["retried"] == 3


def comparison(n: int = 3) -> Comparison:
    def evaluation(label, answers):
        task = {"metrics": {"token_f1": 0.5}, "samples": {"token_f1": [0.5] * n}, "doc_ids": list(range(n)),
                "prompts": [f"Question {i}: what is the port of the Zephyr gateway?" for i in range(n)],
                "answers": answers}
        return Evaluation(label=label, model_hash=f"h-{label}", tasks={"tunegate_domain": task}, cache_hits=[],
                          eval_run_ids={})

    return Comparison(candidate=evaluation("candidate", [f"Port 8443 ({i})." for i in range(n)]),
                      baseline=evaluation("base", [f"Port 8080 ({i})." for i in range(n)]))


def test_the_gate_on_the_judge_blocks_passes_or_asks_for_review():
    rule = GateRule(task="judge", metric="win_rate", min_score=0.5)
    cfg = GateConfig(rules=[rule])
    losing, _ = with_judge(comparison(12), pairs_with([("B", "A")] * 10 + [("A", "B")] * 2), CFG)
    row = decide(cfg, losing.candidate.model_dump(), losing.baseline.model_dump())["rows"][0]
    assert row["verdict"] == "regressed" and row["candidate_score"] == pytest.approx(2 / 12, abs=1e-6)
    winning, _ = with_judge(comparison(12), pairs_with([("A", "B")] * 11 + [("A", "A")]), CFG)
    decision = decide(cfg, winning.candidate.model_dump(), winning.baseline.model_dump())
    assert decision["passed"] and decision["rows"][0]["verdict"] == "improved"
    silent, summary = with_judge(comparison(4), pairs_with([(None, None)] * 4), CFG)
    decision = decide(cfg, silent.candidate.model_dump(), silent.baseline.model_dump())
    assert summary["no_verdict"] == 4 and summary["losses"] == 0 and decision["rows"][0]["verdict"] == "uninformative"
    # Too many replies without a verdict: not a pass, not a block, a person decides.
    assert decision["outcome"] == "needs_review" and "no verdict on 4 of 4 pairs" in decision["review"][0]


def test_a_judge_with_no_pairs_reports_nothing_it_did_not_measure(tmp_path):
    """No generation task answered by both models: zero pairs, no rates, an uninformative rule, no review."""
    from cli.main import judge_line

    judged, summary = with_judge(comparison(0), judge_both_orders(comparison(0), CFG, tmp_path), CFG)
    assert (summary["pairs"], summary["win_rate"], summary["no_verdict_rate"], summary["ci_low"]) == (0, None, None, None)
    assert judged.candidate.tasks["judge"]["metrics"] == {} == judged.baseline.tasks["judge"]["metrics"]
    decision = decide(GateConfig(rules=[GateRule(task="judge", metric="win_rate", min_score=0.5)]),
                      judged.candidate.model_dump(), judged.baseline.model_dump())
    row = decision["rows"][0]
    assert row["verdict"] == "uninformative" and row["n"] == 0 and row["candidate_score"] is None
    assert decision["outcome"] == "passed" and decision["review"] == []  # nothing measured, nothing to review
    assert judge_line(summary).startswith("nothing to judge (no generation task answered by both models) by judge-model "
                                          "over 0 pairs")


@pytest.fixture(scope="module")
def judge_server(tiny_model, tmp_path_factory):
    """The serving issue's server with the tiny model as the judge: poor verdicts, real HTTP."""
    tmp = tmp_path_factory.mktemp("judge")
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_root=str(tmp / "artifacts"),
                              experiment="judge", registered_model=NAME)
    promote_version(tracking, register_adapter(tracking, tiny_model, tmp / "a1", seed=1))
    with serving(tracking, tmp / "server.log") as url:
        yield url


def test_a_real_judge_endpoint_both_orders_retries_and_cache(judge_server, tmp_path):
    cfg = JudgeConfig(base_url=f"{judge_server}/v1", model=NAME, max_tokens=16, max_concurrency=2,
                      structured_output=False)
    evals = comparison(3)
    pairs = judge_both_orders(evals, cfg, tmp_path / "cache")
    # Asked in the prompt only, the tiny model never writes the JSON: each order is asked twice, then has
    # no verdict, and a pair without a verdict is no loss.
    assert [p["outcome"] for p in pairs] == ["no_verdict"] * 3
    assert all(p[o]["attempts"] == 2 and p[o]["error"] == "unparseable" for p in pairs for o in ("first", "second"))
    summary = judge_summary(pairs, cfg)
    assert (summary["no_verdict"], summary["losses"], summary["retried"], summary["win_rate"]) == (3, 0, 6, None)
    # The judge's replies are cached by (question, both answers, model, rubric): no second request.
    again = judge_summary(judge_both_orders(evals, cfg, tmp_path / "cache"), cfg)
    assert again["cached"] == 6
    other_rubric = cfg.model_copy(update={"rubric": "Prefer the shorter answer."})
    assert judge_summary(judge_both_orders(evals, other_rubric, tmp_path / "cache"), other_rubric)["cached"] == 0


def test_a_judge_that_times_out_gives_no_verdict_and_is_not_cached(judge_server, tmp_path):
    cfg = JudgeConfig(base_url=f"{judge_server}/v1", model=NAME, timeout_s=0.001)
    judge = Judge(cfg, tmp_path / "cache")
    result = judge.verdict("Which port?", "8443", "8080")
    assert result["verdict"] is None and result["attempts"] == 2 and result["error"] in ("APITimeoutError",
                                                                                        "APIConnectionError")
    assert not list((tmp_path / "cache").iterdir())  # a failed request is asked again next time


def test_under_structured_outputs_every_reply_the_judge_finishes_is_a_verdict(tiny_model, tmp_path):
    """`tunegate serve-model --model-dir` (a local checkpoint, no registry) decodes under the verdict's schema."""
    import httpx

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/unused.db")
    with serving(tracking, tmp_path / "judge.log", "--model-dir", tiny_model, "--served-name", "tiny-judge") as url:
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["root"] == tiny_model
        cfg = JudgeConfig(base_url=f"{url}/v1", model="tiny-judge", max_tokens=64, max_concurrency=2)
        pairs = judge_both_orders(comparison(6), cfg, tmp_path / "cache")
    replies = [p[order] for p in pairs for order in ("first", "second")]
    # Nothing is unparseable: a reply either is a verdict or was cut at max_tokens (and says so).
    assert {r["error"] for r in replies} <= {None, "truncated"}
    assert all(r["verdict"] in ("A", "B", "tie") for r in replies if r["error"] is None)
    summary = judge_summary(pairs, cfg)
    decided = summary["wins"] + summary["ties"] + summary["losses"]
    assert decided >= 1 and decided + summary["no_verdict"] == 6 and summary["win_rate"] is not None
    assert summary["truncated"] == sum(r["error"] == "truncated" for r in replies)
