"""The whole flow on the tiny model: a good candidate is promoted, a corrupted one is blocked."""

import json

import pytest
from mlflow import MlflowClient

from flows.finetune import finetune_pipeline
from tasks.promote import GateBlocked
from tunegate.config import load_config
from tunegate.registry import CHAMPION, get_alias

from conftest import DEMO


def corrupted_copy(src, dst):
    """Every answer's characters reversed: fluent-looking data that teaches garbage."""
    rows = json.loads(src.read_text())
    for row in rows:
        row["output"] = row["output"][::-1]
    dst.write_text(json.dumps(rows, indent=1))
    return str(dst)


@pytest.mark.usefixtures("prefect_harness")
def test_good_candidate_promoted_then_corrupted_candidate_blocked(tmp_path, tracking, tiny_model):
    params = load_config("configs/tiny.yaml").model_copy(update={"tracking": tracking, "output_dir": str(tmp_path)})
    client = MlflowClient(tracking.tracking_uri)

    good = finetune_pipeline(params.model_copy(update={"run_name": "good"}))
    assert good["gate"] == "passed" and good["baseline"] == "base"
    assert good["rows_kept"] + good["rows_quarantined"] == 139 and good["rows_quarantined"] >= 1  # nothing lost
    assert str(get_alias(client, "test-model", CHAMPION).version) == good["model_version"] == "1"
    assert (tmp_path / "good" / "summary.json").exists()

    data = params.data.model_copy(update={
        "domain_files": [corrupted_copy(DEMO / "identity.json", tmp_path / "identity_bad.json")],
        "general_files": [corrupted_copy(DEMO / "alpaca_general.json", tmp_path / "general_bad.json")],
    })
    with pytest.raises(GateBlocked, match="tunegate_general") as blocked:
        finetune_pipeline(params.model_copy(update={"run_name": "corrupted", "data": data}))
    assert "champion alias did not move" in str(blocked.value)

    assert str(get_alias(client, "test-model", CHAMPION).version) == "1"
    v2 = client.get_model_version("test-model", "2")
    assert v2.tags["gate"] == "blocked" and v2.tags["baseline"] == "champion v1"
    assert v2.tags["gate.tunegate_general"].startswith("regressed")
    bad = json.loads((tmp_path / "corrupted" / "summary.json").read_text())
    general = bad["eval"]["tunegate_general"]
    assert general["candidate"]["bits_per_byte"] > general["baseline"]["bits_per_byte"] + 0.1
    run = client.get_run(bad["mlflow_run_id"])
    assert run.data.tags["gate"] == "blocked"
    assert "gate/decision.md" in {a.path for a in client.list_artifacts(run.info.run_id, "gate")}
