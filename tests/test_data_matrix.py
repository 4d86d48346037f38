"""Every combination of data sections the config allows, through ingest, validate and prepare on the tiny model.

Each one either reaches training (prepare returns train and eval rows) or stops before any training with
tunegate's own error naming the missing or empty input; a raw library exception fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.base_model import base_model
from tasks.ingest import DataInputError, ingest
from tasks.prepare import prepare
from tasks.validate import DataValidationError, validate, validate_records
from tunegate.config import load_config

# As configs/tiny.yaml lists them (tests run from the repository root): rows keep their file as listed.
IDENTITY, GENERAL = "data/demo/identity.json", "data/demo/alpaca_general.json"
pytestmark = pytest.mark.usefixtures("prefect_harness")  # validate writes a Prefect artifact


def write(path: Path, rows) -> str:
    path.write_text(rows if isinstance(rows, str) else json.dumps(rows, ensure_ascii=False))
    return str(path)


def feedback_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What does the nightly report {i} show?"},
                          {"role": "assistant", "content": f"Report {i} lists the runs of the night and their gates."}]}
            for i in range(n)]


def pii_rows(n: int) -> list[dict]:
    """Rows that each carry a personal email: rejected under the default PII policy."""
    return [{"instruction": f"How do I reach support about order {i}?", "input": "",
             "output": f"Write to maria.keller{i}@gmail.com and she answers within a day."} for i in range(n)]


def data_stages(tmp_path: Path, sections: dict):
    """ingest -> validate -> prepare for the tiny config with these data sections."""
    params = load_config("configs/tiny.yaml", [f"data.{k}={json.dumps(v)}" for k, v in sections.items()])
    model = base_model.fn(params.model)
    out = str(tmp_path / "data")
    validated = validate.fn(ingest.fn(params.data, out), params.data, model, out)
    return validated, prepare.fn(validated, params.data, model, out)


NO_EXTRAS = {"general_files": [], "preference_files": []}


@pytest.mark.parametrize("case, sections", [
    ("domain only", {**NO_EXTRAS}),
    ("domain + general", {"preference_files": []}),
    ("domain + preferences", {"general_files": []}),
    ("domain + feedback", {**NO_EXTRAS, "feedback_files": ["{feedback}"]}),
    ("domain + general + preferences + feedback", {"feedback_files": ["{feedback}"]}),
])
def test_combinations_with_domain_data_reach_training(tmp_path, tiny_model, case, sections):
    feedback = write(tmp_path / "feedback.jsonl", "\n".join(json.dumps(r) for r in feedback_rows(8)))
    sections = {k: [feedback if f == "{feedback}" else f for f in v] for k, v in sections.items()}
    validated, prepared = data_stages(tmp_path, sections)
    counts = prepared.counts
    assert counts["domain_eval"] >= 3 and counts["train"] > 0
    report = json.loads(Path(validated.report_file).read_text())
    sft_files = [IDENTITY, *sections.get("general_files", [GENERAL]), *sections.get("feedback_files", [])]
    kept = {f: report["files"][f]["kept"] for f in sft_files}
    assert all(kept.values()) and kept[IDENTITY] >= 88  # of 91 identity rows
    assert counts["train"] + counts["domain_eval"] == sum(kept.values())  # every kept row trains or evaluates
    if sections.get("preference_files") == []:
        assert validated.preferences_kept == 0 and report["preferences_in"] == 0
    else:  # 45 demo pairs; a few fail the preference checks
        assert 40 <= validated.preferences_kept <= 45
    general, feedback_kept = kept.get(GENERAL, 0), kept.get(feedback, 0)
    if not feedback_kept and not general:  # nothing outside the curated data: the window is empty, and says so
        assert "sft/contradiction" in report["nothing_to_check"]
    assert "sft/format" not in report["nothing_to_check"]


@pytest.mark.parametrize("case, sections", [
    ("general only", {"domain_files": [], "preference_files": []}),
    ("feedback only", {"domain_files": [], "general_files": [], "preference_files": [], "feedback_files": [GENERAL]}),
    ("preferences only", {"domain_files": [], "general_files": []}),
])
def test_combinations_without_domain_data_stop_at_the_config(tmp_path, case, sections):
    with pytest.raises(ValueError, match=r"data\.domain_files is empty: list at least one file"):
        data_stages(tmp_path, sections)
    assert not (tmp_path / "data").exists()  # before any work


@pytest.mark.parametrize("section, content", [
    ("domain_files", "[]"),
    ("general_files", ""),
    ("preference_files", "\n\n  \n"),
])
def test_an_empty_file_stops_ingest_naming_it_and_its_section(tmp_path, section, content):
    empty = write(tmp_path / ("empty.json" if content == "[]" else "empty.jsonl"), content)
    sections = {section: [empty] + ([IDENTITY] if section == "domain_files" else [])}
    with pytest.raises(DataInputError, match=rf"{empty}: no rows .* \(listed in data\.{section}\)"):
        data_stages(tmp_path, sections)
    assert not (tmp_path / "data" / "clean.jsonl").exists()  # validate never ran


def test_a_missing_file_stops_ingest_without_retries(tmp_path):
    with pytest.raises(DataInputError, match=r"nowhere\.json: data file not found \(listed in data\.general_files\)"):
        data_stages(tmp_path, {"general_files": [str(tmp_path / "nowhere.json")]})


def test_a_listed_file_whose_every_row_is_quarantined_stops_validate_naming_it(tmp_path):
    # 6 of 142 rows fail pii_email: under the rule's 20% threshold, so only the per-file check can stop it.
    bad = write(tmp_path / "support.json", pii_rows(6))
    with pytest.raises(DataValidationError, match=rf"{bad}: all 6 rows quarantined \(pii_email 6\)"):
        data_stages(tmp_path, {"general_files": [GENERAL, bad]})
    assert not (tmp_path / "data" / "train.jsonl").exists()  # prepare never ran


def test_a_domain_file_whose_every_row_is_unreadable_stops_validate_naming_it(tmp_path):
    broken = write(tmp_path / "faq.jsonl", "\n".join(['{"instruction": "Who are you?", "output": '] * 4))
    with pytest.raises(DataValidationError, match=rf"{broken}"):
        data_stages(tmp_path, {**NO_EXTRAS, "domain_files": [broken]})


def test_a_feedback_window_whose_every_row_is_quarantined_still_trains_the_rest(tmp_path):
    # A window of rows that all fail a check is an outcome of the loop, not a config mistake.
    feedback = write(tmp_path / "feedback.json", pii_rows(3))
    validated, prepared = data_stages(tmp_path, {**NO_EXTRAS, "feedback_files": [feedback]})
    report = json.loads(Path(validated.report_file).read_text())
    assert report["files"][feedback] == {"rows": 3, "kept": 0, "rules": {"pii_email": 3}}
    assert prepared.counts["train"] > 0


def test_zero_sft_rows_are_checked_as_nothing_to_check(tmp_path):
    """validate_records on no SFT rows at all (every suite over zero rows) with preference pairs beside them."""
    records = write(tmp_path / "records.jsonl", "")
    pair = {"id": "p-1", "prompt": [{"role": "user", "content": "Name the pipeline."}],
            "chosen": {"role": "assistant", "content": "tunegate"}, "rejected": {"role": "assistant", "content": "no"},
            "source": {"file": "prefs.json", "line": 1}}
    prefs = write(tmp_path / "prefs.jsonl", json.dumps(pair) + "\n")
    report = validate_records(Path(records), None, tmp_path / "out", preferences_path=Path(prefs), data_docs=False)
    assert report["rows_kept"] == 0 and report["preferences_kept"] == 1 and report["success"]
    assert {"sft/format", "sft/length", "sft/duplicates", "sft/pii"} <= set(report["nothing_to_check"])
    assert "preference/preference_format" not in report["nothing_to_check"]
    assert all(r["failed_fraction"] == 0.0 and r["measured_rows"] == 0
               for s in report["suites"] if s["data"] == "sft" for r in s["rules"])


def test_a_run_on_domain_data_only_reaches_a_gate_decision(tmp_path, tracking, tiny_model):
    from flows.finetune import finetune_pipeline

    params = load_config("configs/tiny.yaml", ["data.general_files=[]", "data.preference_files=[]"])
    summary = finetune_pipeline(params.model_copy(update={"tracking": tracking, "output_dir": str(tmp_path),
                                                          "run_name": "domain-only"}))
    assert summary.gate in ("passed", "blocked", "needs_review") and summary.model_version == "1"
    report = json.loads((tmp_path / "domain-only" / "data" / "report.json").read_text())
    assert report["nothing_to_check"] == ["sft/contradiction"] and report["preferences_in"] == 0
