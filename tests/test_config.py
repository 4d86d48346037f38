import os
from pathlib import Path

import pytest

from tunegate.config import PipelineParams, load_config

ROOT = Path(__file__).resolve().parent.parent


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


def test_module_command_lines_take_repeated_set_overrides():
    from tunegate.config import overrides_from_argv

    argv = ["configs/tiny.yaml", "--set", "sft.max_steps=3", "--set=data.pii_policy=redact"]
    assert overrides_from_argv(argv) == ("configs/tiny.yaml", ["sft.max_steps=3", "data.pii_policy=redact"])
    with pytest.raises(SystemExit):
        overrides_from_argv(["configs/tiny.yaml", "sft.max_steps=3"])  # an override without --set is refused


def test_python_m_tunegate_config_prints_the_overridden_config():
    import subprocess
    import sys

    import yaml

    out = subprocess.run([sys.executable, "-m", "tunegate.config", "configs/tiny.yaml", "--set", "sft.max_steps=3",
                          "--set", "dpo.enabled=false"], capture_output=True, text=True, check=True)
    printed = yaml.safe_load(out.stdout)
    assert printed["sft"]["max_steps"] == 3 and printed["dpo"]["enabled"] is False


@pytest.mark.parametrize("module", ["flows.finetune", "flows.retrain_from_feedback"])
def test_python_m_flow_passes_set_overrides_to_the_config(module):
    # An invalid override must fail in config validation, naming the field, before any flow starts. Before
    # the fix, flows.finetune passed "--set" itself on as an override ("--set expects key=value, got '--set'").
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", module, "configs/tiny.yaml", "--set", "sft.max_steps=many"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "invalid config" in out.stderr and "sft.max_steps" in out.stderr, out.stderr[-2000:]
    assert "got '--set'" not in out.stderr


def test_the_tracking_uri_defaults_to_mlflow_tracking_uri_like_mlflow_itself(tmp_path):
    import subprocess
    import sys

    code = ("import mlflow; from tunegate.config import load_config as load\n"
            "print(load('configs/tiny.yaml').tracking.tracking_uri)\n"
            "mlflow.set_tracking_uri('sqlite:///elsewhere.db')  # MLflow writes the variable too; the user's stays\n"
            "print(load('configs/tiny.yaml').tracking.tracking_uri)\n"
            "print(load('configs/tiny.yaml', ['tracking.tracking_uri=sqlite:///x.db']).tracking.tracking_uri)")

    def defaults(env_value):
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env |= {"MLFLOW_TRACKING_URI": env_value} if env_value else {}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert defaults(None) == ["sqlite:///mlruns/mlflow.db"] * 2 + ["sqlite:///x.db"]
    assert defaults("http://mlflow.team.internal:5000") == ["http://mlflow.team.internal:5000"] * 2 + ["sqlite:///x.db"]
