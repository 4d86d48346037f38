import pytest

from tunegate.config import PipelineParams, load_config


def test_yaml_loads_with_defaults_filled():
    params = load_config("configs/demo.yaml")
    assert params.base_model == "bundled:smollm2-135m-instruct"
    assert params.sft.learning_rate == 1e-3
    assert params.sft.alpha == 2 * params.sft.lora_r  # alpha defaults to 2r
    assert params.tracking.tracking_uri == "sqlite:///mlruns/mlflow.db"
    assert params.trust_remote_code is False


def test_set_overrides_parse_values_as_yaml():
    params = load_config("configs/tiny.yaml", ["sft.max_steps=3", "sft.target_modules=[q_proj, v_proj]",
                                               "data.pii_policy=redact"])
    assert params.sft.max_steps == 3
    assert params.sft.target_modules == ["q_proj", "v_proj"]
    assert params.data.pii_policy == "redact"


def test_unknown_key_is_refused_with_the_file_and_field():
    with pytest.raises(ValueError, match=r"(?s)configs/tiny.yaml: invalid config.*sft.lora_rank.*Extra inputs"):
        load_config("configs/tiny.yaml", ["sft.lora_rank=8"])


def test_gate_rule_on_a_task_that_is_not_run_is_refused():
    with pytest.raises(ValueError, match="tunegate_math"):
        load_config("configs/tiny.yaml", ["gate.rules=[{task: tunegate_math, metric: acc}]"])


def test_schema_is_a_json_schema_for_the_prefect_form():
    schema = PipelineParams.model_json_schema()
    assert schema["$defs"]["SFTConfig"]["properties"]["learning_rate"]["description"].startswith("Peak")


def test_gate_rules_may_name_lm_eval_tasks_the_suite_runs():
    params = load_config("configs/tiny.yaml", ["eval.lm_eval_tasks=[arc_easy]", "eval.limits={arc_easy: 50}",
                                               "gate.rules=[{task: arc_easy, metric: acc, max_drop: 0.02}]"])
    assert params.gate.rules[0].higher_is_better is None  # taken from the lm-eval task at gate time
    assert params.eval.limits == {"arc_easy": 50}
    with pytest.raises(ValueError, match="cpu_threads"):
        load_config("configs/tiny.yaml", ["eval.cpu_threads=0"])
