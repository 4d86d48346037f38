import numpy as np
import pytest

from tasks.gate import GateError, decide, decision_markdown, mcnemar_exact, paired_bootstrap
from tunegate.config import GateConfig, GateRule

FOOTING = {"seed": 1234, "batch_size": 8, "lm_eval": "0.4.13"}


def evaluation(label, task, metric, samples, higher_is_better=True, version="1", **footing):
    samples = [float(v) for v in samples]
    result = {"metrics": {metric: float(np.mean(samples))}, "samples": {metric: samples},
              "higher_is_better": {metric: higher_is_better}, "doc_ids": list(range(len(samples))),
              "definition_hash": "d", "data_hash": "x", "limit": None, "footing": FOOTING, **footing}
    return {"label": label, "version": version, "tasks": {task: result}}


def gate_config(*rules, **kw):
    return GateConfig(rules=list(rules), **kw)


RULE = GateRule(task="t", metric="acc", max_drop=0.02)


def test_a_clear_drop_is_blocked_and_named():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.9, 200)
    decision = decide(gate_config(RULE), evaluation("cand", "t", "acc", base - 0.1), evaluation("champion v1", "t", "acc", base))
    row = decision["rows"][0]
    assert not decision["passed"] and decision["regressed"] == ["t"] and not decision["first_model"]
    assert row["delta"] == pytest.approx(-0.1) and row["test"].startswith("bootstrap")
    assert row["ci_low"] == pytest.approx(-0.1) and row["ci_high"] == pytest.approx(-0.1)  # every doc moved by -0.1
    assert row["p_value"] == pytest.approx(2 / 5001, abs=1e-6) and row["verdict"] == "regressed"
    assert "worse by 0.1000 > allowed 0.02" in row["note"]
    assert "| t | acc | 0.7" in decision_markdown(decision, "2") and "**regressed**" in decision_markdown(decision, "2")


def test_a_drop_inside_noise_is_not_a_regression():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, 30).astype(float)
    cand = base.copy()
    cand[:2] = 1 - cand[:2]  # two flips on 30 samples: a small, noisy change
    decision = decide(gate_config(GateRule(task="t", metric="acc", max_drop=0.0)),
                      evaluation("c", "t", "acc", cand), evaluation("b", "t", "acc", base))
    assert decision["passed"], decision["rows"]
    assert decision["rows"][0]["test"].startswith("mcnemar")


def test_mcnemar_exact_p_value_by_hand():
    # 10 docs the champion got right and the candidate wrong, none the other way: p = 2 * 0.5**10.
    assert mcnemar_exact(np.array([-1.0] * 10 + [0.0] * 90)) == (pytest.approx(2 / 1024), 0, 10)
    # 6 better, 2 worse: p = 2 * P(X <= 2), X ~ Bin(8, 1/2) = 2 * (1 + 8 + 28) / 256.
    assert mcnemar_exact(np.array([1.0] * 6 + [-1.0] * 2))[0] == pytest.approx(2 * 37 / 256)
    assert mcnemar_exact(np.zeros(5)) == (1.0, 0, 0)

    base = np.array([1.0] * 60 + [0.0] * 40)
    cand = base.copy()
    cand[:10] = 0.0  # accuracy 0.60 -> 0.50
    row = decide(gate_config(GateRule(task="t", metric="acc", max_drop=0.05)),
                 evaluation("c", "t", "acc", cand), evaluation("b", "t", "acc", base))["rows"][0]
    assert row["verdict"] == "regressed" and row["p_value"] == pytest.approx(2 / 1024, rel=1e-4)
    assert row["test"] == "mcnemar (n=100, 0 better, 10 worse)"


def test_an_improvement_is_claimed_only_past_the_threshold_and_the_noise():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.3, 0.6, 300)
    rule = GateRule(task="t", metric="f1", max_drop=0.05)

    def verdict(cand):
        return decide(gate_config(rule), evaluation("c", "t", "f1", cand), evaluation("b", "t", "f1", base))["rows"][0]

    assert verdict(base + 0.1)["verdict"] == "improved"
    small = verdict(base + 0.02)  # real but smaller than the threshold
    assert small["verdict"] == "unchanged" and "within the allowed 0.05" in small["note"]
    noisy = verdict(base + 0.1 + rng.normal(0, 2.0, 300))  # large mean move, but noise of sd 2 on 300 docs
    assert noisy["verdict"] == "unchanged" and noisy["p_value"] >= 0.05 and "noise" in noisy["note"]


def test_lower_is_better_metrics_regress_upwards_and_absolute_limits_apply():
    base = np.full(50, 1.0) + np.linspace(0, 0.01, 50)
    rule = GateRule(task="t", metric="bpb", higher_is_better=False, max_drop=0.05)
    worse = decide(gate_config(rule), evaluation("c", "t", "bpb", base + 0.2), evaluation("b", "t", "bpb", base))
    better = decide(gate_config(rule), evaluation("c", "t", "bpb", base - 0.2), evaluation("b", "t", "bpb", base))
    assert not worse["passed"] and better["passed"] and better["rows"][0]["verdict"] == "improved"
    assert worse["rows"][0]["ci_low"] == pytest.approx(0.2)  # the interval is of the delta, in metric units
    ceiling = GateRule(task="t", metric="bpb", higher_is_better=False, max_drop=1.0, max_score=0.9)
    assert decide(gate_config(ceiling), evaluation("c", "t", "bpb", base - 0.05),
                  evaluation("b", "t", "bpb", base))["regressed"]


def test_direction_comes_from_the_lm_eval_task_when_the_rule_leaves_it_out():
    base = np.full(40, 2.0) + np.linspace(0, 0.1, 40)
    rule = GateRule(task="t", metric="bpb", max_drop=0.05)  # higher_is_better: None
    decision = decide(gate_config(rule), evaluation("c", "t", "bpb", base + 0.3, higher_is_better=False),
                      evaluation("b", "t", "bpb", base, higher_is_better=False))
    assert decision["regressed"] == ["t"] and decision["rows"][0]["higher_is_better"] is False


def test_first_model_is_judged_against_the_base_model_and_the_absolute_minimums():
    rng = np.random.default_rng(5)
    base = rng.uniform(0.0, 0.2, 100)
    rule = GateRule(task="t", metric="f1", max_drop=0.02, min_score=0.3)
    decision = decide(gate_config(rule), evaluation("c", "t", "f1", base + 0.05),
                      evaluation("base", "t", "f1", base, version=None))
    assert decision["first_model"] and not decision["passed"]  # better than base, still under the floor
    assert "< minimum 0.3" in decision["rows"][0]["note"]
    assert "first model: no champion yet" in decision_markdown(decision, "1")
    good = decide(gate_config(rule), evaluation("c", "t", "f1", base + 0.3), evaluation("base", "t", "f1", base,
                                                                                      version=None))
    assert good["passed"] and good["improved"] == ["t"]


def test_evaluations_on_different_footing_are_not_compared():
    same = np.linspace(0, 1, 20)
    other = evaluation("b", "t", "acc", same, data_hash="y")
    with pytest.raises(GateError, match="same footing"):
        decide(gate_config(RULE), evaluation("c", "t", "acc", same), other)
    with pytest.raises(GateError, match="McNemar needs 0/1"):
        decide(gate_config(GateRule(task="t", metric="acc", test="mcnemar")), evaluation("c", "t", "acc", same),
               evaluation("b", "t", "acc", same))


def test_bootstrap_interval_covers_the_true_mean_difference_and_scales():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 400)
    low, high, p = paired_bootstrap(base + 0.3 + rng.normal(0, 0.5, 400) - base, 2000, 0, 0.05)
    assert low < 0.3 < high and high - low < 0.2 and p < 0.001
    low, high, p = paired_bootstrap(rng.normal(0, 1, 20_000), 2000, 0, 0.05)  # resampled in blocks
    assert low < 0 < high and p > 0.05


def test_tiers_a_supporting_regression_asks_for_review_an_advisory_one_is_only_reported():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.9, 200)
    cand, champ = evaluation("cand", "t", "acc", base - 0.1), evaluation("champion v1", "t", "acc", base)
    supporting = decide(gate_config(GateRule(task="t", metric="acc", max_drop=0.02, tier="supporting")), cand, champ)
    assert supporting["outcome"] == "needs_review" and not supporting["passed"] and supporting["regressed"] == []
    assert supporting["review"][0].startswith("t/acc regressed (supporting rule): worse by 0.1000")
    assert "# Gate: NEEDS REVIEW" in decision_markdown(supporting, "2")
    advisory = decide(gate_config(GateRule(task="t", metric="acc", max_drop=0.02, tier="advisory")), cand, champ)
    assert advisory["outcome"] == "passed" and advisory["rows"][0]["verdict"] == "regressed"


def test_an_interval_too_wide_to_tell_asks_for_review():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, 12).astype(float)
    cand = base.copy()
    cand[:3] = 1 - cand[:3]  # 3 flips on 12 docs: no verdict the data can support either way
    rule = GateRule(task="t", metric="acc", max_drop=0.05, test="bootstrap")
    plain = decide(gate_config(rule), evaluation("c", "t", "acc", cand), evaluation("b", "t", "acc", base))
    assert plain["outcome"] == "passed"
    row = plain["rows"][0]
    width = row["ci_high"] - row["ci_low"]
    assert width > 0.2
    wide = decide(gate_config(rule, review_ci_width=0.2), evaluation("c", "t", "acc", cand),
                  evaluation("b", "t", "acc", base))
    assert wide["outcome"] == "needs_review" and "is wider than 0.2" in wide["review"][0]
    assert decide(gate_config(rule, review_ci_width=width + 0.01), evaluation("c", "t", "acc", cand),
                  evaluation("b", "t", "acc", base))["outcome"] == "passed"


def test_a_rule_over_zero_samples_is_uninformative_and_reports_no_number():
    decision = decide(gate_config(RULE, GateRule(task="t", metric="acc", min_score=0.9, max_drop=0.0)),
                      evaluation("cand", "t", "acc", []), evaluation("champion v1", "t", "acc", []))
    assert [r["verdict"] for r in decision["rows"]] == ["uninformative", "uninformative"]
    assert all(r[k] is None for r in decision["rows"] for k in ("candidate_score", "delta", "p_value", "ci_low"))
    assert decision["answer_drift"]["share"] is None and decision["answer_drift"]["n"] == 0
    assert decision["outcome"] == "passed" and decision["uninformative"] == ["t/acc", "t/acc"]
    markdown = decision_markdown(decision, "2")
    assert "| t | acc | n/a | n/a | n/a | [n/a, n/a] | n/a | none | none (n=0) |" in markdown
    assert "Answer drift: 0/0 eval answers changed materially (n/a;" in markdown
    blocked = decide(gate_config(RULE, block_uninformative=True), evaluation("cand", "t", "acc", []),
                     evaluation("champion v1", "t", "acc", []))
    assert blocked["outcome"] == "blocked"  # a team that asked for it blocks on what it cannot measure
