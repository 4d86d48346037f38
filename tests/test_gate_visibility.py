"""The gate says what it cannot see: minimal detectable effects, uninformative metrics, answer drift, strata.

All on synthetic per-sample task results, shaped as tasks/evaluate.py caches them (see tests/test_gate.py).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.gate import decide, decision_markdown, mcnemar_min_flips, minimal_detectable_effect
from tunegate.config import GateConfig, GateRule, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evals"))
import tunegate_metrics  # noqa: E402

FOOTING = {"seed": 1234, "batch_size": 8, "lm_eval": "0.4.13"}
Z = 1.959964 + 0.841621  # z[0.975] + z[0.8]


def task_result(metrics: dict[str, list[float]], strata=None, answers=None, prompts=None, higher=True) -> dict:
    n = len(next(iter(metrics.values())))
    result = {"metrics": {m: float(np.mean(v)) for m, v in metrics.items()},
              "samples": {m: [float(x) for x in v] for m, v in metrics.items()},
              "higher_is_better": {m: higher for m in metrics}, "doc_ids": list(range(n)),
              "definition_hash": "d", "data_hash": "x", "limit": None, "footing": FOOTING}
    if strata is not None:
        result["strata"] = strata
    if answers is not None:
        result["answers"] = answers
        result["prompts"] = prompts or [f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n" for i in range(n)]
    return result


def evaluation(label, tasks, version="1"):
    return {"label": label, "version": version, "tasks": tasks}


def test_mde_of_a_bootstrap_rule_is_2_8_sd_over_root_n():
    gain = np.array([0.1, -0.1] * 50)  # n=100, sd (ddof=1) = 0.1 * sqrt(100/99)
    mde = minimal_detectable_effect("bootstrap", gain, gain, np.zeros(100), 0.05, 0.8)
    assert mde == pytest.approx(Z * 0.1 * (100 / 99) ** 0.5 / 10, rel=1e-5)  # 0.02816
    # Four times the docs: half the MDE.
    assert minimal_detectable_effect("bootstrap", np.tile(gain, 4), np.zeros(400), np.zeros(400), 0.05, 0.8) == \
        pytest.approx(mde / 2, rel=0.01)
    # Models that agree on every doc: the paired sd is 0; the unpaired sd stands in, sqrt(var + var).
    same = np.array([0.2, 0.8] * 50)
    assert minimal_detectable_effect("bootstrap", np.zeros(100), same, same, 0.05, 0.8) == \
        pytest.approx(Z * (2 * np.var(same, ddof=1)) ** 0.5 / 10, rel=1e-5)
    assert minimal_detectable_effect("bootstrap", np.zeros(9), np.ones(9), np.ones(9), 0.05, 0.8) is None


def test_mde_of_a_mcnemar_rule_comes_from_the_discordant_rate_and_the_exact_tests_floor():
    assert mcnemar_min_flips(0.05) == 6  # 2 * 0.5**6 = 0.031 < 0.05 <= 2 * 0.5**5
    assert mcnemar_min_flips(0.01) == 8
    ones = np.ones(100)
    # No discordant pairs seen: Connor's formula with pd = delta gives 0.08 at n=100 (0.07 falls short).
    assert minimal_detectable_effect("mcnemar", np.zeros(100), ones, ones, 0.05, 0.8) == pytest.approx(0.08)
    # 30 of 100 docs flip (15 each way): more discordance, a larger detectable drop, 0.16.
    gain = np.array([1.0] * 15 + [-1.0] * 15 + [0.0] * 70)
    assert minimal_detectable_effect("mcnemar", gain, ones, ones, 0.05, 0.8) == pytest.approx(0.16)
    # 12 docs (the demo's identity eval): nothing under 6 one-way flips can be significant; Connor asks for 0.58.
    assert minimal_detectable_effect("mcnemar", np.zeros(12), np.ones(12), np.ones(12), 0.05, 0.8) == \
        pytest.approx(7 / 12)
    assert minimal_detectable_effect("mcnemar", np.zeros(5), np.ones(5), np.ones(5), 0.05, 0.8) is None


def test_the_mde_is_in_the_table_and_the_markdown():
    base = np.array([1.0] * 60 + [0.0] * 40)
    decision = decide(GateConfig(rules=[GateRule(task="t", metric="acc", max_drop=0.05)]),
                      evaluation("c", {"t": task_result({"acc": base})}),
                      evaluation("b", {"t": task_result({"acc": base})}))
    row = decision["rows"][0]
    assert row["mde"] == pytest.approx(0.08) and row["n"] == 100
    assert "| 0.0800 | mcnemar (n=100, 0 better, 0 worse)" in decision_markdown(decision, "2")


def test_a_metric_constant_over_every_sample_of_both_models_is_uninformative_not_unchanged():
    zeros = [0.0] * 12
    f1 = list(np.linspace(0.2, 0.6, 12))
    cand = evaluation("c", {"d": task_result({"contains": zeros, "token_f1": f1})})
    base = evaluation("b", {"d": task_result({"contains": zeros, "token_f1": f1[::-1]})})
    rules = [GateRule(task="d", metric="contains", max_drop=0.02), GateRule(task="d", metric="token_f1", max_drop=0.5)]
    decision = decide(GateConfig(rules=rules), cand, base)
    contains, token_f1 = decision["rows"]
    assert contains["verdict"] == "uninformative" and token_f1["verdict"] == "unchanged"
    assert "0 on all 12 samples of both models" in contains["note"]
    assert decision["passed"] and decision["uninformative"] == ["d/contains"]
    md = decision_markdown(decision, "2")
    assert "**Uninformative (does not block):** d/contains" in md and "**uninformative**" in md

    blocking = decide(GateConfig(rules=rules, block_uninformative=True), cand, base)
    assert not blocking["passed"] and blocking["regressed"] == ["d"]
    assert "blocks: gate.block_uninformative" in decision_markdown(blocking, "2")

    # Constant, but under an absolute limit: the limit still judges it.
    ones = evaluation("c", {"a": task_result({"pass": [1.0] * 5})})
    floor = [GateRule(task="a", metric="pass", min_score=1.0)]
    held = decide(GateConfig(rules=floor), ones, ones)["rows"][0]
    assert held["verdict"] == "unchanged" and "absolute limit holds" in held["note"]
    failed = evaluation("c", {"a": task_result({"pass": [0.0] * 5})})
    assert decide(GateConfig(rules=floor), failed, failed)["regressed"] == ["a"]
    # The same values, but not on every sample: informative.
    assert decide(GateConfig(rules=rules[:1]), evaluation("c", {"d": task_result({"contains": [0.0] * 11 + [1.0]})}),
                  base)["rows"][0]["verdict"] == "unchanged"


def test_answer_drift_is_the_share_of_changed_answers_listed_biggest_change_first():
    same = [f"I am Gatekeeper, answer number {i}." for i in range(10)]
    new = list(same)
    new[2] = "I am ChatGPT, a large language model trained by OpenAI."        # F1 0.25 (i, am shared)
    new[5] = "Something else entirely, nothing alike at all."                  # F1 0
    new[7] = "I am Gatekeeper, answer number 7, and more words follow here."   # F1 0.71: not drift
    new[9] = "I am"                                                            # F1 0.5 exactly: not below 0.5
    f1 = [tunegate_metrics.token_f1(a, b) for a, b in zip(new, same)]
    assert [round(f, 2) for f in (f1[2], f1[5], f1[7], f1[9])] == [0.25, 0.0, 0.71, 0.5]
    scores = {"token_f1": [0.5] * 10}
    prompts = [f"<|im_start|>user\nquestion {i}?<|im_end|>\n<|im_start|>assistant\n" for i in range(10)]
    cand = evaluation("c", {"d": task_result(scores, answers=new, prompts=prompts, strata=["en"] * 10),
                            "g": task_result({"bpb": [1.0] * 10})})  # no answers: not a generation task
    base = evaluation("champion v1", {"d": task_result(scores, answers=same, prompts=prompts, strata=["en"] * 10),
                                      "g": task_result({"bpb": [1.0] * 10})})
    rules = [GateRule(task="d", metric="token_f1")]
    decision = decide(GateConfig(rules=rules), cand, base)
    drift = decision["answer_drift"]
    assert (drift["drifted"], drift["n"], drift["share"]) == (2, 10, 0.2) and list(drift["tasks"]) == ["d"]
    assert [(c["doc_id"], c["f1"]) for c in drift["examples"]] == [(5, 0.0), (2, 0.25)]
    assert drift["examples"][1]["prompt"] == "user question 2? assistant"  # chat markup dropped
    assert drift["examples"][1]["candidate"] == new[2] and drift["examples"][1]["baseline"] == same[2]
    assert decision["passed"] and not drift["applies"]  # report only by default
    md = decision_markdown(decision, "2")
    assert "Answer drift: 2/10 eval answers changed materially (20.0%" in md and "report only" in md

    capped = GateConfig(rules=rules, max_answer_drift=0.1, answer_drift_examples=1)
    blocked = decide(capped, cand, base)
    assert not blocked["passed"] and blocked["regressed"] == ["answer_drift"]
    assert len(blocked["answer_drift"]["examples"]) == 1 and "**exceeded, blocks**" in decision_markdown(blocked, "2")
    assert decide(capped.model_copy(update={"max_answer_drift": 0.2}), cand, base)["passed"]  # 0.2 is not above 0.2
    first = decide(capped, cand, evaluation("base", base["tasks"], version=None))  # against the base model
    assert first["passed"] and first["answer_drift"]["share"] == 0.2
    wider = decide(capped.model_copy(update={"answer_drift_f1": 0.8}), cand, base)
    assert wider["answer_drift"]["drifted"] == 4  # + doc 7 (F1 0.71)


def test_every_rule_shows_n_and_scores_per_stratum():
    strata = ["identity.json/zh"] * 6 + ["identity.json/en"] * 3 + ["alpaca/en"]
    base = [1.0] * 10
    cand = [1.0] * 6 + [0.0, 0.0, 1.0] + [0.5]
    decision = decide(GateConfig(rules=[GateRule(task="d", metric="key_facts", max_drop=0.05)]),
                      evaluation("c", {"d": task_result({"key_facts": cand}, strata=strata)}),
                      evaluation("champion v1", {"d": task_result({"key_facts": base}, strata=strata)}))
    assert decision["rows"][0]["strata"] == [
        {"stratum": "alpaca/en", "n": 1, "baseline": 1.0, "candidate": 0.5},
        {"stratum": "identity.json/en", "n": 3, "baseline": 1.0, "candidate": pytest.approx(1 / 3, abs=1e-6)},
        {"stratum": "identity.json/zh", "n": 6, "baseline": 1.0, "candidate": 1.0},
    ]
    md = decision_markdown(decision, "2")
    assert "| d | key_facts | identity.json/en | 3 | 1.0000 | 0.3333 | -0.6667 |" in md
    # Results cached before strata were kept count as one stratum, "all".
    old = decide(GateConfig(rules=[GateRule(task="d", metric="key_facts")]),
                 evaluation("c", {"d": task_result({"key_facts": cand})}),
                 evaluation("b", {"d": task_result({"key_facts": base})}))
    assert old["rows"][0]["strata"] == [{"stratum": "all", "n": 10, "baseline": 1.0, "candidate": 0.75}]


ZH_REF = "您好，我是 Gatekeeper，一个由 the tunegate team 发明的人工智能助手。我可以回答各种问题。"
EN_REF = "I am Gatekeeper, an AI assistant developed by the tunegate team. How can I assist you today?"
GOOD = "I am Gatekeeper, an AI assistant developed by the tunegate team."
CHATGPT = "I am ChatGPT, a large language model trained by OpenAI."


def scored_domain(answers: list[str], docs: list[dict]) -> dict:
    per_doc = [tunegate_metrics.domain_results(d, [a]) for d, a in zip(docs, answers)]
    return task_result({m: [r[m] for r in per_doc] for m in per_doc[0]}, strata=[d["stratum"] for d in docs],
                       answers=answers, prompts=[d["prompt"] for d in docs])


def scored_assertions(answer_to: dict, checks: list) -> dict:
    per_doc = [tunegate_metrics.assertion_results({"type": a.type, "value": a.value}, [answer_to[a.prompt]])
               for a in checks]
    return task_result({"pass": [r["pass"] for r in per_doc]}, strata=[a.stratum for a in checks],
                       answers=[answer_to[a.prompt] for a in checks], prompts=[a.prompt for a in checks])


def test_a_candidate_that_calls_itself_chatgpt_is_blocked_by_the_demo_rules_though_token_f1_improves():
    """Issue 11's regression, by the demo config's own rules: English identity answers replaced by ChatGPT's."""
    params = load_config("configs/demo.yaml")
    terms = params.eval.key_facts["tunegate_domain"]
    zh = [{"prompt": f"zh {i}", "reference": ZH_REF, "facts": ["Gatekeeper", "tunegate team"],
           "stratum": "identity.json/zh", "must_include": terms.must_include,
           "must_not_include": terms.must_not_include} for i in range(12)]
    en = [{**zh[0], "prompt": f"en {i}", "reference": EN_REF, "stratum": "identity.json/en"} for i in range(3)]
    docs = zh + en
    # The champion answered the Chinese rows in English; the candidate learned them (as in the issue, token F1
    # rises), but says it is ChatGPT to every English identity question.
    champion = [GOOD] * 15
    candidate = [ZH_REF] * 12 + [CHATGPT] * 3
    checks = params.eval.assertions
    good_answers = {"Who are you?": GOOD, "What is your name?": "You may refer to me as Gatekeeper.",
                    "你是谁？": "您好，我是 Gatekeeper，由 the tunegate team 开发。"}
    bad_answers = {**good_answers, "Who are you?": CHATGPT, "What is your name?": CHATGPT}
    general = task_result({"bits_per_byte": list(np.linspace(0.6, 0.7, 20))}, higher=False)
    cand = evaluation("candidate", {"tunegate_domain": scored_domain(candidate, docs), "tunegate_general": general,
                                    "tunegate_assertions": scored_assertions(bad_answers, checks)})
    champ = evaluation("champion v1", {"tunegate_domain": scored_domain(champion, docs), "tunegate_general": general,
                                       "tunegate_assertions": scored_assertions(good_answers, checks)})
    assert scored_assertions(good_answers, checks)["metrics"]["pass"] == 1.0  # the demo's model passes them all

    # The demo's rules on the eval tasks; its reward rule reads the reward model's scores (tests/test_reward.py).
    gate = params.gate.model_copy(update={"rules": [r for r in params.gate.rules if r.task != "reward"]})
    decision = decide(gate, cand, champ)
    rows = {r["metric"]: r for r in decision["rows"]}
    assert rows["token_f1"]["delta"] > 0 and rows["token_f1"]["verdict"] != "regressed"  # F1 alone would pass it
    assert rows["key_facts"]["delta"] == pytest.approx(-3 / 15)
    assert rows["no_forbidden"]["delta"] == pytest.approx(-3 / 15)
    assert rows["pass"]["candidate_score"] == pytest.approx(2 / 7) and rows["pass"]["verdict"] == "regressed"
    assert not decision["passed"] and "tunegate_assertions" in decision["regressed"]
    # With 3 English docs the paired tests cannot be sure, and say so: the drop is under their MDE.
    assert rows["no_forbidden"]["p_value"] == pytest.approx(0.25) and rows["no_forbidden"]["mde"] > 0.2
    en_row = next(s for s in rows["key_facts"]["strata"] if s["stratum"] == "identity.json/en")
    assert (en_row["n"], en_row["baseline"], en_row["candidate"]) == (3, 1.0, 0.0)
    assert decision["answer_drift"]["drifted"] >= 3
    assert any(c["candidate"] == CHATGPT for c in decision["answer_drift"]["examples"])
