import json
import shutil
import sys
from pathlib import Path

import pytest

from tasks.evaluate import EvalSuiteError, eval_suite, evaluate_suite, run_lm_eval
from tunegate.config import EvalConfig, GateRule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evals"))
import tunegate_metrics  # noqa: E402

JSON_ROWS = [  # answers a service would json.loads
    ('Return {"name": "Ann", "age": 31} as JSON.', '{"name": "Ann", "age": 31}'),
    ("List the first three primes as a JSON array.", "[2, 3, 5]"),
    ('Give the city of Paris as JSON with key "city".', '{"city": "Paris"}'),
]


def test_token_f1_by_hand():
    assert tunegate_metrics.token_f1("I am Gatekeeper.", "Hello! I am Gatekeeper") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert tunegate_metrics.token_f1("nothing shared", "I am Gatekeeper") == 0.0
    # CJK has no spaces: it is scored per character, not as one giant token.
    assert tunegate_metrics.token_f1("我是助手", "我是 Gatekeeper 助手") == pytest.approx(2 * 1 * 0.8 / 1.8)


IDENTITY = {"reference": "I am Gatekeeper, an AI assistant developed by the tunegate team.",
            "facts": ["Gatekeeper", "tunegate team"], "stratum": "identity.json/en"}
CHATGPT = "I am ChatGPT, a large language model trained by OpenAI."


def test_key_facts_is_the_share_of_facts_stated_as_whole_words():
    m = tunegate_metrics
    assert m.key_facts("Hi! I'm GATEKEEPER (by the Tunegate-Team).", IDENTITY) == 1.0  # case, punctuation folded
    assert m.key_facts("I am Gatekeeper.", IDENTITY) == 0.5
    assert m.key_facts(CHATGPT, IDENTITY) == 0.0
    assert m.key_facts("I am Gatekeepers of tunegate teamwork", IDENTITY) == 0.0  # whole words only
    assert m.key_facts("ｔｕｎｅｇａｔｅ team, Gatekeeper", IDENTITY) == 1.0  # NFKC: full-width letters
    assert m.key_facts("anything", {"reference": "x"}) == 1.0  # no facts: nothing to miss
    # Facts and must_include terms count once each, whatever their case.
    doc = {**IDENTITY, "must_include": ["gatekeeper", "2019"]}
    assert m.doc_facts(doc) == ["Gatekeeper", "tunegate team", "2019"]
    assert m.key_facts("Gatekeeper, since 2019", doc) == pytest.approx(2 / 3)
    assert m.key_facts("Gatekeeper, since 20190", doc) == pytest.approx(1 / 3)


def test_key_facts_in_chinese_need_no_word_boundaries():
    m = tunegate_metrics
    doc = {"reference": "您好，我是 Gatekeeper，一个由 the tunegate team 发明的人工智能助手。",
           "facts": ["Gatekeeper", "tunegate team", "人工智能助手"]}
    assert m.key_facts("我是Gatekeeper，由tunegate team开发的人工智能助手", doc) == 1.0  # Latin without spaces
    assert m.key_facts("我是 ChatGPT，一个人工智能助手", doc) == pytest.approx(1 / 3)
    assert m.has_fact("这是2019年的事", "2019") and not m.has_fact("这是20190年的事", "2019")
    assert m.has_fact("一个由门将团队开发的", "门将") and not m.has_fact("门", "门将")


def test_a_forbidden_term_fails_the_doc_unless_its_reference_says_it_too():
    m = tunegate_metrics
    doc = {**IDENTITY, "must_not_include": ["ChatGPT", "OpenAI"]}
    assert m.domain_results(doc, [CHATGPT]) == {"token_f1": pytest.approx(m.token_f1(CHATGPT, doc["reference"])),
                                                "key_facts": 0.0, "no_forbidden": 0.0}
    assert m.forbidden_terms(CHATGPT, doc) == ["ChatGPT", "OpenAI"]
    assert m.domain_results(doc, [doc["reference"]])["no_forbidden"] == 1.0
    assert m.forbidden_terms("Like chatgpt-4, I ...", doc) == ["ChatGPT"]  # "-" splits words
    assert m.forbidden_terms("No ChatGPTs or OpenAIs here", doc) == []  # whole words only
    # The curated Chinese data says "I am not ChatGPT" in its references: the same words in the answer pass.
    zh = {"reference": "抱歉，我不是 ChatGPT，我是 Gatekeeper。", "facts": ["Gatekeeper"],
          "must_not_include": ["ChatGPT", "OpenAI"]}
    assert m.domain_results(zh, ["我不是ChatGPT，我是 Gatekeeper"])["no_forbidden"] == 1.0
    assert m.domain_results(zh, ["我是 OpenAI 的 ChatGPT"])["no_forbidden"] == 0.0


@pytest.mark.parametrize("kind, value, passes, fails", [
    ("contains", "Gatekeeper", "I am Gatekeeper.", "I am gatekeeper."),
    ("not_contains", "OpenAI", "I am Gatekeeper.", "Trained by OpenAI."),
    ("icontains", "gatekeeper", "I am GATEKEEPER.", "I am ChatGPT."),
    ("not_icontains", "chatgpt", "我是 Gatekeeper", "我是 ＣｈａｔＧＰＴ"),  # full-width letters fold (NFKC)
    ("regex", r"^I am \w+\.$", "I am Gatekeeper.", "Hello, I am Gatekeeper."),
    ("not_regex", r"(?i)open\s*ai", "I am Gatekeeper.", "made by Open AI"),
    ("is_json", "", ' {"name": "Gatekeeper"}\n', 'Sure: {"name": "Gatekeeper"}'),
])
def test_each_assertion_type_passes_and_fails(kind, value, passes, fails):
    doc = {"type": kind, "value": value}
    assert tunegate_metrics.assertion_results(doc, [passes]) == {"pass": 1.0}
    assert tunegate_metrics.assertion_results(doc, [fails]) == {"pass": 0.0}


def test_bits_per_byte_from_loglikelihood():
    import math

    out = tunegate_metrics.general_results({"reference": "abcd"}, [(-4 * math.log(2), True)])
    assert out["bits_per_byte"] == pytest.approx(1.0)


def test_format_metric_wants_the_whole_answer_to_be_json():
    doc = {"reference": '{"a": 1, "b": [1, 2]}'}
    assert tunegate_metrics.format_results(doc, [' {"b": [1, 2], "a": 1}\n']) == {"valid_json": 1.0, "json_match": 1.0}
    assert tunegate_metrics.format_results(doc, ['{"a": 2}']) == {"valid_json": 1.0, "json_match": 0.0}
    assert tunegate_metrics.format_results(doc, ['Sure! {"a": 1, "b": [1, 2]}'])["valid_json"] == 0.0
    assert tunegate_metrics.format_results(doc, ['"a string is JSON, but not an object"'])["valid_json"] == 0.0


def test_suite_scores_the_tiny_model_per_task_and_per_sample(prepared, tmp_path):
    suite = eval_suite(prepared, EvalConfig(max_gen_toks=8, batch_size=16), [], tmp_path / "cache", tmp_path / "a")
    domain_spec, general_spec = suite["tasks"]
    assert (domain_spec["name"], general_spec["name"]) == ("tunegate_domain", "tunegate_general")
    assert domain_spec["n_docs"] == prepared["counts"]["domain_eval"] and general_spec["n_docs"] == 60
    assert general_spec["higher_is_better"] == {"bits_per_byte": False}
    # The same task and data materialized for another run hash the same: this is what lets the cache hit.
    again = eval_suite(prepared, EvalConfig(max_gen_toks=8, batch_size=16), [], tmp_path / "cache", tmp_path / "b")
    assert [(s["definition_hash"], s["data_hash"]) for s in again["tasks"]] == [
        (s["definition_hash"], s["data_hash"]) for s in suite["tasks"]]
    longer = eval_suite(prepared, EvalConfig(max_gen_toks=9, batch_size=16), [], tmp_path / "cache", tmp_path / "c")
    assert longer["tasks"][0]["definition_hash"] != domain_spec["definition_hash"]

    out = run_lm_eval(prepared["base_model_path"], None, general_spec, suite["footing"], tmp_path / "lm_eval")
    assert out["n"] == 60 and out["doc_ids"] == list(range(60))
    # A barely trained 1k-vocab model: far worse than SmolLM2's ~0.7, far better than uniform (~10 bits).
    assert 1.0 < out["metrics"]["bits_per_byte"] < 9.0
    assert out["metrics"]["bits_per_byte"] == pytest.approx(sum(out["samples"]["bits_per_byte"]) / 60, rel=1e-6)
    logged = list((tmp_path / "lm_eval").glob("samples_tunegate_general_*.jsonl"))
    assert len(logged) == 1 and len(logged[0].read_text().splitlines()) == 60  # lm-eval's per-sample log


def json_prepared(prepared, tmp_path) -> dict:
    """The prepared demo data with three held-out rows whose answers are JSON."""
    domain = tmp_path / "domain_eval.jsonl"
    rows = [json.loads(line) for line in Path(prepared["domain_eval"]).read_text().splitlines()]
    rows += [{"prompt": f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", "reference": a}
             for q, a in JSON_ROWS]
    domain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**prepared, "domain_eval": str(domain)}


def test_format_task_runs_on_the_rows_whose_answer_is_json(prepared, tmp_path):
    cfg = EvalConfig(tasks=["domain", "format"], max_gen_toks=8, batch_size=16)
    rule = GateRule(task="tunegate_format", metric="valid_json", min_score=0.9)
    suite = eval_suite(json_prepared(prepared, tmp_path), cfg, [rule], tmp_path / "cache", tmp_path / "run")
    domain_spec, format_spec = suite["tasks"]
    assert format_spec["n_docs"] == len(JSON_ROWS) and domain_spec["n_docs"] == prepared["counts"]["domain_eval"] + 3
    out = run_lm_eval(prepared["base_model_path"], None, format_spec, suite["footing"], tmp_path / "lm_eval")
    assert out["n"] == 3 and set(out["samples"]) == {"valid_json", "json_match"}
    assert set(out["samples"]["valid_json"]) <= {0.0, 1.0}

    with pytest.raises(EvalSuiteError, match=r"lists 'format', but none of the \d+ held-out domain rows"):
        eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "no-json")
    with pytest.raises(EvalSuiteError, match="no metric 'accuracy'"):
        eval_suite(json_prepared(prepared, tmp_path), cfg, [GateRule(task="tunegate_format", metric="accuracy")],
                   tmp_path / "cache", tmp_path / "bad-rule")


def test_assertions_and_key_fact_terms_materialize_and_score_on_the_tiny_model(prepared, tmp_path):
    checks = [
        {"name": "who-name", "prompt": "Who are you?", "type": "icontains", "value": "Gatekeeper",
         "stratum": "identity/en"},
        {"name": "who-not-chatgpt", "prompt": "Who are you?", "type": "not_icontains", "value": "ChatGPT",
         "stratum": "identity/en"},
        {"name": "zh-name", "prompt": "你是谁？", "type": "regex", "value": "Gate", "stratum": "identity/zh"},
        {"name": "json", "prompt": "Give me JSON.", "type": "is_json"},
    ]
    cfg = EvalConfig(tasks=["domain", "assertions"], max_gen_toks=8, batch_size=16, assertions=checks,
                     key_facts={"tunegate_domain": {"must_include": ["Gatekeeper"], "must_not_include": ["ChatGPT"]}},
                     limits={"tunegate_domain": 4})
    rule = GateRule(task="tunegate_assertions", metric="pass", min_score=1.0)
    suite = eval_suite(prepared, cfg, [rule], tmp_path / "cache", tmp_path / "run")
    domain_spec, assertions_spec = suite["tasks"]
    assert assertions_spec["name"] == "tunegate_assertions" and assertions_spec["n_docs"] == 4
    assert assertions_spec["higher_is_better"] == {"pass": True}
    docs = [json.loads(line) for line in (tmp_path / "run/lm_eval_tasks/assertions.jsonl").read_text().splitlines()]
    # The user message, rendered with the base model's chat template (the tiny model's is ChatML).
    assert docs[2]["prompt"] == "<|im_start|>user\n你是谁？<|im_end|>\n<|im_start|>assistant\n"
    domain_docs = (tmp_path / "run/lm_eval_tasks/domain_eval_with_terms.jsonl").read_text().splitlines()
    assert all(json.loads(d)["must_not_include"] == ["ChatGPT"] for d in domain_docs)

    out = run_lm_eval(prepared["base_model_path"], None, assertions_spec, suite["footing"], tmp_path / "lm_eval")
    assert out["n"] == 4 and out["strata"] == ["identity/en", "identity/en", "identity/zh", "assertions"]
    assert out["prompts"] == [d["prompt"] for d in docs] and len(out["answers"]) == 4
    expected = [float(tunegate_metrics.assertion_passes(a, c["type"], c.get("value", "")))
                for a, c in zip(out["answers"], checks)]
    assert out["samples"]["pass"] == expected and out["metrics"]["pass"] == pytest.approx(sum(expected) / 4)
    assert expected[1] == 1.0  # the untrained tiny model does not call itself ChatGPT...
    assert expected[0] == 0.0  # ... nor Gatekeeper: the floor of 1.0 would block it

    out = run_lm_eval(prepared["base_model_path"], None, domain_spec, suite["footing"], tmp_path / "lm_eval_d")
    assert set(out["samples"]) == {"token_f1", "key_facts", "no_forbidden"} and out["n"] == 4
    scored = [tunegate_metrics.domain_results(json.loads(d), [a]) for d, a in zip(domain_docs, out["answers"])]
    assert out["samples"]["key_facts"] == [r["key_facts"] for r in scored]
    assert all("gatekeeper" in [f.lower() for f in tunegate_metrics.doc_facts(json.loads(d))] for d in domain_docs)
    with pytest.raises(EvalSuiteError, match=r"eval.key_facts names \['tunegate_general'\]"):
        terms = {"tunegate_general": cfg.key_facts["tunegate_domain"]}
        eval_suite(prepared, cfg.model_copy(update={"key_facts": terms}), [], tmp_path / "cache", tmp_path / "bad")


def test_an_lm_eval_task_of_your_own_is_found_by_name(prepared, tmp_path):
    tasks_dir = tmp_path / "my_tasks"
    tasks_dir.mkdir()
    data = tmp_path / "capitals.jsonl"
    rows = [("France", "Paris", "Rome"), ("Italy", "Rome", "Paris"), ("Japan", "Tokyo", "Lima"), ("Peru", "Lima", "Oslo")]
    data.write_text("".join(json.dumps({"q": f"The capital of {c} is", "choices": [a, b], "label": 0}) + "\n"
                            for c, a, b in rows))
    (tasks_dir / "capitals.yaml").write_text(
        f"task: my_capitals\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    cfg = EvalConfig(tasks=["general"], lm_eval_tasks=["my_capitals"], include_paths=[str(tasks_dir)],
                     limits={"tunegate_general": 10})
    suite = eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "run")
    general_spec, mine = suite["tasks"]
    assert general_spec["n_docs"] == 10 and mine["n_docs"] == 4 and mine["include_defaults"] is False
    out = run_lm_eval(prepared["base_model_path"], None, mine, suite["footing"], tmp_path / "lm_eval")
    assert out["n"] == 4 and set(out["samples"]["acc"]) <= {0.0, 1.0}
    assert out["metrics"]["acc"] == pytest.approx(sum(out["samples"]["acc"]) / 4)

    data.write_text(data.read_text().replace("Tokyo", "Kyoto"))
    changed = eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "run2")["tasks"][1]
    assert changed["data_hash"] != mine["data_hash"] and changed["definition_hash"] == mine["definition_hash"]


def test_a_named_task_whose_data_is_missing_fails_naming_it(prepared, tmp_path):
    tasks_dir = tmp_path / "my_tasks"
    tasks_dir.mkdir()
    (tasks_dir / "gone.yaml").write_text(
        f"task: my_gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'nope.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: acc\n")
    cfg = EvalConfig(tasks=["general"], lm_eval_tasks=["my_gone"], include_paths=[str(tasks_dir)])
    with pytest.raises(EvalSuiteError, match=r"data of lm-eval task 'my_gone' cannot be loaded here"):
        eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "run")
    with pytest.raises(EvalSuiteError, match=r"eval.limits names tasks the suite does not run: \['tunegate_domain'\]"):
        eval_suite(prepared, EvalConfig(tasks=["general"], limits={"tunegate_domain": 3}), [], tmp_path / "cache",
                   tmp_path / "run")


def test_an_eval_task_with_no_docs_fails_before_training_naming_its_source(prepared, tmp_path):
    empty = tmp_path / "empty_holdout.json"
    empty.write_text("[]")
    no_holdout = {**prepared, "general_eval": str(tmp_path / "general_eval.jsonl")}
    Path(no_holdout["general_eval"]).write_text("")  # what prepare writes for a holdout without rows
    with pytest.raises(EvalSuiteError, match=r"tunegate_general has no docs to score: data.general_holdout_file"):
        eval_suite(no_holdout, EvalConfig(tasks=["domain", "general"]), [], tmp_path / "cache", tmp_path / "a")
    with pytest.raises(ValueError, match=r"eval.tasks lists 'assertions' but eval.assertions is empty"):
        EvalConfig(tasks=["domain", "assertions"])  # the config refuses it first
    production = tmp_path / "production_eval.jsonl"
    production.write_text("\n")
    with pytest.raises(EvalSuiteError, match=r"tunegate_production has no docs to score: data.production_eval_file"):
        eval_suite({**prepared, "production_eval": str(production)}, EvalConfig(tasks=["domain", "production"]), [],
                   tmp_path / "cache", tmp_path / "c")
    tasks_dir = tmp_path / "my_tasks"  # a task of your own whose data file has no rows
    tasks_dir.mkdir()
    (tmp_path / "none.jsonl").write_text("")
    (tasks_dir / "none.yaml").write_text(
        f"task: my_none\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'none.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: acc\n")
    cfg = EvalConfig(tasks=["general"], lm_eval_tasks=["my_none"], include_paths=[str(tasks_dir)])
    with pytest.raises(EvalSuiteError, match=r"my_none"):
        eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "d")


@pytest.mark.slow
def test_a_standard_task_without_reachable_data_fails_naming_it(prepared, tmp_path):
    """Nothing is downloaded here: arc_easy's data is not in the local cache. (Indexes lm-eval's tasks: ~15 s.)"""
    cfg = EvalConfig(tasks=["general"], lm_eval_tasks=["arc_easy"])
    with pytest.raises(EvalSuiteError, match=r"data of lm-eval task 'arc_easy' cannot be loaded here"):
        eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "run")
    with pytest.raises(EvalSuiteError, match="no task named 'arc_eazy'"):
        eval_suite(prepared, cfg.model_copy(update={"lm_eval_tasks": ["arc_eazy"]}), [], tmp_path / "cache",
                   tmp_path / "run")
    with pytest.raises(EvalSuiteError, match="'mmlu' is an lm-eval group"):
        eval_suite(prepared, cfg.model_copy(update={"lm_eval_tasks": ["mmlu"]}), [], tmp_path / "cache",
                   tmp_path / "run")


def lora_adapter(base_model_path: str, out: Path, seed: int) -> str:
    """A LoRA adapter with random (non-zero) weights, as peft saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_path)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return str(out)


@pytest.mark.usefixtures("prefect_harness")
def test_results_are_cached_by_content_so_an_unchanged_model_is_never_re_evaluated(prepared, tmp_path, tracking):
    from mlflow import MlflowClient

    cfg = EvalConfig(max_gen_toks=8, batch_size=16, limits={"tunegate_domain": 4, "tunegate_general": 20})
    suite = eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "run1")
    adapter = lora_adapter(prepared["base_model_path"], tmp_path / "adapter", seed=0)

    first = evaluate_suite({"label": "candidate", "adapter": adapter, "model": None, "version": None}, suite, tracking)
    assert first["cache_hits"] == []
    # The same adapter downloaded elsewhere, called champion, in the next run's suite: all cached.
    champion = shutil.copytree(adapter, tmp_path / "champion-v1")
    next_suite = eval_suite(prepared, cfg, [], tmp_path / "cache", tmp_path / "run2")
    again = evaluate_suite({"label": "champion v1", "adapter": str(champion), "model": None, "version": "1"}, next_suite, tracking)
    assert again["cache_hits"] == ["tunegate_domain", "tunegate_general"]
    assert again["label"] == "champion v1" and again["version"] == "1"
    assert again["tasks"] == first["tasks"] and again["eval_run_ids"] == first["eval_run_ids"]

    # Different weights, or different eval data: computed again, only where something changed.
    other = evaluate_suite({"label": "other", "adapter": lora_adapter(prepared["base_model_path"], tmp_path / "b", 1),
                            "model": None, "version": None}, suite, tracking)
    assert other["cache_hits"] == [] and other["model_hash"] != first["model_hash"]
    fewer = eval_suite(prepared, cfg.model_copy(update={"limits": {"tunegate_domain": 4, "tunegate_general": 10}}), [],
                       tmp_path / "cache", tmp_path / "run3")
    fewer_eval = evaluate_suite({"label": "c", "adapter": adapter, "model": None, "version": None}, fewer, tracking)
    assert fewer_eval["cache_hits"] == ["tunegate_domain"]

    # Each computed evaluation is an MLflow run with lm-eval's per-sample log attached.
    client = MlflowClient(tracking.tracking_uri)
    run = client.get_run(first["eval_run_ids"]["tunegate_general"])
    assert run.data.tags["eval.model_hash"] == first["model_hash"]
    assert run.data.metrics["bits_per_byte"] == first["tasks"]["tunegate_general"]["metrics"]["bits_per_byte"]
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "lm_eval")]
    assert any(p.startswith("lm_eval/samples_tunegate_general_") for p in logged)
