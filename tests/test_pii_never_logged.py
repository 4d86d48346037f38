"""After a flow run on data with planted PII, no file the run wrote, nor MLflow, nor Prefect holds any planted value."""

import json
from pathlib import Path

import pytest

from flows.finetune import finetune_pipeline
from tunegate.config import ChecksConfig, load_config

from conftest import DEMO

PLANTED = {
    "EMAIL": "wanda.planted@example-corp.com",
    "CREDIT_CARD": "4539 1488 0343 6467",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "SSN": "219-09-9999",
    "API_KEY": "ghp_PlantedToken0123456789abcdefGHIJKLMNOP",
    "PHONE": "(415) 555-0199",
    "IP_ADDRESS": "203.0.113.77",
}


def scan(paths, values) -> dict[str, list[str]]:
    """value -> files whose bytes contain it."""
    found = {}
    for path in paths:
        data = Path(path).read_bytes()
        for v in values:
            if v.encode() in data:
                found.setdefault(v, []).append(str(path))
    return found


@pytest.mark.usefixtures("prefect_harness")
def test_planted_pii_reaches_neither_mlflow_nor_prefect(tmp_path, tracking, tiny_model):
    from prefect.settings import get_current_settings

    rows = json.loads((DEMO / "identity.json").read_text())
    for i, value in enumerate(PLANTED.values()):
        rows[10 + i]["output"] += f" Contact: {value}"
    domain = tmp_path / "identity_pii.json"
    domain.write_text(json.dumps(rows, indent=2))
    params = load_config("configs/tiny.yaml", ["sft.max_steps=2", "eval.limits={tunegate_general: 4}", "eval.max_gen_toks=4"])
    data = params.data.model_copy(update={"domain_files": [str(domain)], "checks": ChecksConfig(
        pii_policies={"EMAIL": "redact", "IBAN": "redact", "PHONE": "redact"})})
    params = params.model_copy(update={"tracking": tracking, "output_dir": str(tmp_path / "out"), "run_name": "pii",
                                       "data": data})
    finetune_pipeline(params)

    run_data = tmp_path / "out" / "pii" / "data"
    clean, quarantine = (run_data / "clean.jsonl").read_text(), (run_data / "quarantine.jsonl").read_text()
    assert "<EMAIL>" in clean and "<IBAN>" in clean and "<PHONE>" in clean  # redacted and kept
    reasons = {json.loads(x)["source"]["line"]: json.loads(x)["reasons"] for x in quarantine.splitlines()}
    for kind in ("CREDIT_CARD", "SSN", "API_KEY", "IP_ADDRESS"):  # rejected: quarantined by file:line + reason, redacted
        assert f"<{kind}>" in quarantine and PLANTED[kind] not in quarantine + clean
        assert any(f"pii_{kind.lower()}: contains 1" in r for rs in reasons.values() for r in rs)
    report = json.loads((run_data / "report.json").read_text())
    assert report["pii_redacted"] == {"EMAIL": 1, "IBAN": 1, "PHONE": 2}  # the general mix has a phone too

    db_url = get_current_settings().server.database.connection_url.get_secret_value()
    prefect_db = Path(db_url.split("///", 1)[1])
    prefect_files = [p for p in prefect_db.parent.glob(prefect_db.name + "*")]
    mlflow_db = Path(tracking.tracking_uri.split("///", 1)[1])
    mlflow_files = [mlflow_db, *[p for p in Path(tracking.artifact_root).rglob("*") if p.is_file()]]
    assert prefect_files and len(mlflow_files) > 5
    assert any(p.name == "validation_report.json" for p in mlflow_files)
    assert scan([domain], PLANTED.values()).keys() == set(PLANTED.values())  # the scan finds values that are there
    assert scan(prefect_files + mlflow_files, PLANTED.values()) == {}
    run_files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # every stage's folder, checkpoints too
    assert len(run_files) > 20 and scan(run_files, PLANTED.values()) == {}
