"""register and promote against a real sqlite MLflow store."""

import json

import pytest
from mlflow import MlflowClient

from tasks.promote import GateBlocked, move_champion, promote
from tasks.register import register_run
from tunegate.config import load_config
from tunegate.registry import CHAMPION, PREVIOUS, get_alias


def fake_eval(label, f1):
    return {"label": label, "tasks": {"tunegate_domain": {"metrics": {"token_f1": f1}, "samples": {"token_f1": [f1]}}}}


@pytest.fixture()
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(b"not read by these tests")
    return folder


def register_once(tracking, adapter, f1):
    params = load_config("configs/tiny.yaml").model_copy(update={"tracking": tracking})
    report = {"rows_in": 10, "rows_kept": 9, "rows_quarantined": 1, "rule_counts": {"pii_email": 1},
              "clean": "/x/clean.jsonl", "quarantine": "/x/quarantine.jsonl", "suites": []}
    plot = adapter.parent / "loss_curve.png"
    plot.write_bytes(b"png")
    trained = {"adapter": str(adapter), "model": None, "train_loss": 1.5, "seconds": 3.0, "loss_plot": str(plot),
               "loss_curve": [[1, 2.0], [2, 1.0]], "eval_loss_curve": [[2, 1.7]]}
    return register_run(params, "run-a", report, {"data_hash": "abc"}, trained, fake_eval("candidate", f1),
                        fake_eval("base", 0.1), {**trained, "skipped": True})


def test_register_logs_params_metrics_artifacts_and_a_version(tracking, adapter):
    registered = register_once(tracking, adapter, 0.5)
    client = MlflowClient(tracking.tracking_uri)
    run = client.get_run(registered["run_id"])
    assert run.data.params["sft.lora_r"] == "8"
    assert run.data.metrics["eval/tunegate_domain/token_f1"] == 0.5
    assert run.data.metrics["baseline/tunegate_domain/token_f1"] == 0.1
    assert run.data.metrics["data/rows_quarantined"] == 1
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss_step")] == [2.0, 1.0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/eval_loss_step")] == [2]
    assert "train/loss_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "config.json", "data", "eval", "train"} <= artifacts
    version = client.get_model_version("test-model", registered["version"])
    assert version.tags["data_hash"] == "abc" and version.tags["base_model"] == "tiny"
    assert version.tags["gate"] == "pending" and version.source.endswith("/adapter")
    assert "/x/quarantine.jsonl" not in json.dumps(client.get_run(run.info.run_id).data.params)


def test_promote_moves_champion_and_keeps_previous(tracking, adapter):
    v1 = register_once(tracking, adapter, 0.5)
    v2 = register_once(tracking, adapter, 0.6)
    client = MlflowClient(tracking.tracking_uri)
    assert promote.fn({"passed": True}, v1, tracking)["previous"] is None
    assert promote.fn({"passed": True}, v2, tracking)["previous"] == v1["version"]
    assert str(get_alias(client, "test-model", CHAMPION).version) == v2["version"]
    assert str(get_alias(client, "test-model", PREVIOUS).version) == v1["version"]
    assert move_champion(client, "test-model", v2["version"]) == v2["version"]  # idempotent


def test_blocked_gate_leaves_the_champion_and_names_the_tasks(tracking, adapter):
    v1 = register_once(tracking, adapter, 0.5)
    v2 = register_once(tracking, adapter, 0.1)
    promote.fn({"passed": True}, v1, tracking)
    with pytest.raises(GateBlocked, match="regressed on tunegate_domain"):
        promote.fn({"passed": False, "regressed": ["tunegate_domain"], "markdown": "table"}, v2, tracking)
    assert str(get_alias(MlflowClient(tracking.tracking_uri), "test-model", CHAMPION).version) == v1["version"]
