"""The deployment definitions: prefect.yaml and `tunegate serve` describe the same two deployments."""

import yaml

from tunegate.config import PipelineParams, load_config

from conftest import ROOT


def test_prefect_yaml_defines_both_deployments_with_the_demo_config_as_defaults():
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    assert set(deps) == {"finetune", "retrain-from-feedback"}
    demo = load_config(ROOT / "configs" / "demo.yaml")
    for dep in deps.values():
        path, func = dep["entrypoint"].split(":")
        assert f"def {func}(" in (ROOT / path).read_text()
        assert PipelineParams.model_validate(dep["parameters"]["params"]) == demo  # no drift from demo.yaml
        assert dep["work_pool"]["name"] == "tunegate-local"
    assert "schedules" not in deps["finetune"]
    (nightly,) = deps["retrain-from-feedback"]["schedules"]
    assert nightly["cron"] == "0 3 * * *" and nightly["timezone"] == "Europe/Berlin"
    assert deps["retrain-from-feedback"]["concurrency_limit"] == 1


def test_serve_builds_the_same_deployments_with_form_defaults_from_the_config():
    from deployments.serve import build_deployments

    finetune, retrain = build_deployments("configs/tiny.yaml", ["sft.max_steps=7"], "30 1 * * *", "UTC")
    assert (finetune.name, retrain.name) == ("finetune", "retrain-from-feedback")
    assert finetune.parameters["params"]["sft"]["max_steps"] == 7
    assert not finetune.schedules
    (schedule,) = retrain.schedules
    assert schedule.schedule.cron == "30 1 * * *" and schedule.schedule.timezone == "UTC"
    assert retrain.concurrency_limit == 1 and not finetune.concurrency_limit
    from prefect.utilities.callables import parameter_schema

    from flows.finetune import finetune_pipeline
    from flows.retrain_from_feedback import retrain_from_feedback

    form = parameter_schema(finetune_pipeline).model_dump_for_openapi()  # what the UI draws as the form
    assert "params" in form["properties"] and "PipelineParams" in form["definitions"]
    assert form["definitions"]["SFTConfig"]["properties"]["max_steps"]["description"]
    assert set(parameter_schema(retrain_from_feedback).properties) == {"params", "feedback"}
