"""The deployment definitions: prefect.yaml and `tunegate serve` describe the same deployments."""

import yaml

from tunegate.config import GuardConfig, PipelineParams, TrackingConfig, load_config

from conftest import ROOT


def test_prefect_yaml_defines_the_deployments_with_the_demo_config_as_defaults():
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    assert set(deps) == {"finetune", "retrain-from-feedback", "monitor-serving", "live-guard", "sweep", "sweep-trial"}
    demo = load_config(ROOT / "configs" / "demo.yaml")
    for dep in deps.values():
        path, func = dep["entrypoint"].split(":")
        assert f"def {func}(" in (ROOT / path).read_text()
        assert dep["work_pool"]["name"] == "tunegate-local"
    for name in ("finetune", "retrain-from-feedback", "sweep"):  # no drift from demo.yaml
        assert PipelineParams.model_validate(deps[name]["parameters"]["params"]) == demo
    assert TrackingConfig.model_validate(deps["monitor-serving"]["parameters"]["tracking"]) == demo.tracking
    (daily,) = deps["monitor-serving"]["schedules"]
    assert daily["cron"] == "30 0 * * *" and daily["timezone"] == "UTC"
    assert "schedules" not in deps["finetune"]
    (nightly,) = deps["retrain-from-feedback"]["schedules"]
    assert nightly["cron"] == "0 3 * * *" and nightly["timezone"] == "Europe/Berlin"
    assert deps["retrain-from-feedback"]["concurrency_limit"] == 1
    guard = deps["live-guard"]
    assert TrackingConfig.model_validate(guard["parameters"]["tracking"]) == demo.tracking
    assert GuardConfig.model_validate(guard["parameters"]["guard"]) == demo.guard
    assert guard["parameters"]["canary"] == demo.serve.canary  # None: demo.yaml runs no canary
    (every,) = guard["schedules"]
    assert every["cron"] == "*/15 * * * *" and every["timezone"] == "UTC" and guard["concurrency_limit"] == 1


def test_serve_builds_the_same_deployments_with_form_defaults_from_the_config():
    from deployments.serve import build_deployments

    finetune, retrain, monitor, guard, _, _ = build_deployments(
        "configs/tiny.yaml", ["sft.max_steps=7", "tracking.experiment=t", "guard.min_ratings=12",
                              "serve.canary={share: 0.2}"], "30 1 * * *", "UTC")
    assert (finetune.name, retrain.name, monitor.name, guard.name) == ("finetune", "retrain-from-feedback",
                                                                       "monitor-serving", "live-guard")
    assert guard.parameters["tracking"]["experiment"] == "t" and guard.parameters["guard"]["min_ratings"] == 12
    assert guard.parameters["canary"]["share"] == 0.2 and guard.concurrency_limit == 1
    (every,) = guard.schedules
    assert every.schedule.cron == "*/15 * * * *" and every.schedule.timezone == "UTC"
    assert monitor.parameters["tracking"]["experiment"] == "t"
    (daily,) = monitor.schedules
    assert daily.schedule.cron == "30 0 * * *" and daily.schedule.timezone == "UTC"
    assert finetune.parameters["params"]["sft"]["max_steps"] == 7
    assert not finetune.schedules
    (schedule,) = retrain.schedules
    assert schedule.schedule.cron == "30 1 * * *" and schedule.schedule.timezone == "UTC"
    assert retrain.concurrency_limit == 1 and not finetune.concurrency_limit
    from prefect.utilities.callables import parameter_schema

    from flows.finetune import finetune_pipeline
    from flows.monitor_serving import monitor_serving
    from flows.retrain_from_feedback import retrain_from_feedback

    form = parameter_schema(finetune_pipeline).model_dump_for_openapi()  # what the UI draws as the form
    assert "params" in form["properties"] and "PipelineParams" in form["definitions"]
    assert form["definitions"]["SFTConfig"]["properties"]["max_steps"]["description"]
    assert set(parameter_schema(retrain_from_feedback).properties) == {"params"}  # feedback: params.feedback
    assert set(parameter_schema(monitor_serving).properties) == {"tracking", "day"}
    from flows.guard import live_guard

    guard_form = parameter_schema(live_guard).model_dump_for_openapi()
    assert set(guard_form["properties"]) == {"tracking", "guard", "canary"}
    assert guard_form["definitions"]["GuardConfig"]["properties"]["max_increase"]["description"]


def test_the_sweep_deployment_has_its_trial_deployment_next_to_it_and_the_sweep_section_in_its_form():
    from prefect.utilities.callables import parameter_schema

    from deployments.serve import build_deployments
    from flows.sweep import sweep, sweep_trial

    *_, sweep_dep, trial_dep = build_deployments("configs/tiny.yaml", ["sweep.trials=5"], suffix="-x")
    # flows/sweep.py finds the trials' deployment as <the sweep deployment's name>-trial
    assert (sweep_dep.name, trial_dep.name) == ("sweep-x", "sweep-x-trial") and trial_dep.flow_name == "sweep-trial"
    assert sweep_dep.parameters["params"]["sweep"]["trials"] == 5 and not sweep_dep.schedules
    form = parameter_schema(sweep).model_dump_for_openapi()
    space = form["definitions"]["SweepSpace"]["properties"]
    assert space["learning_rate"]["description"].startswith("sft.learning_rate")
    assert form["definitions"]["SweepConfig"]["properties"]["trials"]["minimum"] == 1
    assert set(parameter_schema(sweep_trial).properties) == {"params", "trial", "prepared", "suite"}
