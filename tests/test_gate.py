import numpy as np

from tasks.gate import decide, paired_bootstrap
from tunegate.config import GateRule


def evaluation(label, task, metric, samples):
    return {"label": label, "tasks": {task: {"metrics": {metric: float(np.mean(samples))},
                                             "samples": {metric: list(samples)}}}}


RULE = GateRule(task="t", metric="acc", max_drop=0.02)


def test_a_clear_drop_is_blocked_and_named():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.9, 200)
    decision = decide([RULE], evaluation("cand", "t", "acc", base - 0.1), evaluation("base", "t", "acc", base))
    row = decision["rows"][0]
    assert not decision["passed"] and decision["regressed"] == ["t"]
    assert row["delta"] == -0.1 or abs(row["delta"] + 0.1) < 1e-9
    assert row["improvement_ci_high"] < 0 and row["p_not_better"] == 1.0


def test_a_drop_inside_noise_is_not_a_regression():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, 30).astype(float)
    cand = base.copy()
    cand[:2] = 1 - cand[:2]  # two flips on 30 samples: a small, noisy change
    decision = decide([GateRule(task="t", metric="acc", max_drop=0.0)],
                      evaluation("c", "t", "acc", cand), evaluation("b", "t", "acc", base))
    assert decision["passed"], decision["rows"]


def test_lower_is_better_metrics_regress_upwards_and_absolute_limits_apply():
    base = np.full(50, 1.0) + np.linspace(0, 0.01, 50)
    rule = GateRule(task="t", metric="bpb", higher_is_better=False, max_drop=0.05)
    worse = decide([rule], evaluation("c", "t", "bpb", base + 0.2), evaluation("b", "t", "bpb", base))
    better = decide([rule], evaluation("c", "t", "bpb", base - 0.2), evaluation("b", "t", "bpb", base))
    assert not worse["passed"] and better["passed"] and better["rows"][0]["verdict"] == "improved"
    floor = GateRule(task="t", metric="bpb", higher_is_better=False, max_drop=1.0, max_score=0.9)
    assert decide([floor], evaluation("c", "t", "bpb", base - 0.05), evaluation("b", "t", "bpb", base))["regressed"]


def test_bootstrap_interval_covers_the_true_mean_difference():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 400)
    low, high, _ = paired_bootstrap(base + 0.3 + rng.normal(0, 0.5, 400), base)
    assert low < 0.3 < high and high - low < 0.2
