import json
from pathlib import Path

import pytest

from data_checks import duplicates, format as format_check, pii
from tasks.validate import DataValidationError, failure_message, validate_records


def rec(i, messages):
    return {"id": f"r{i}", "messages": messages, "source": {"file": "data.jsonl", "line": i}}


def chat(user, assistant):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_format_rules_flag_exactly_the_broken_rows():
    records = [
        rec(1, chat("hi", "hello")),
        rec(2, [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]),
        rec(3, chat("hi", "   ")),
        rec(4, [{"role": "user", "content": "only a question"}]),
        rec(5, []),
        rec(6, [{"role": "system", "content": "s"}] + chat("q", "a")),
    ]
    frame, details = format_check.detect(records)
    assert frame.sum().to_dict() == {
        "format_no_messages": 1, "format_unknown_role": 1, "format_empty_content": 1, "format_no_assistant_last": 2}
    assert not frame.iloc[0].any() and not frame.iloc[5].any()
    assert details[1]["format_unknown_role"] == "message 1: role 'bot'"
    assert details[2]["format_empty_content"] == "message 1 (assistant) is empty"


def test_exact_duplicates_ignore_case_and_spaces_and_name_the_first_copy():
    records = [rec(1, chat("Hello  there", "Hi")), rec(2, chat("hello there", "hi ")), rec(3, chat("other", "x"))]
    frame, details = duplicates.detect(records)
    assert frame["duplicates_exact"].tolist() == [False, True, False]
    assert details[1]["duplicates_exact"] == "duplicate of data.jsonl:1"


@pytest.mark.parametrize(
    "text,kind",
    [("write to jane.doe@example.org", "EMAIL"), ("call (555) 123-4567", "PHONE"), ("+44 20 7946 0958", "PHONE"),
     ("555-867-5309 is taken", "PHONE")],
)
def test_pii_is_found_and_redacted_with_a_typed_placeholder(text, kind):
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert frame[f"pii_{kind.lower()}"].item()
    assert f"<{kind}>" in pii.redact(text)


@pytest.mark.parametrize("text", ["In 1990-2000 sales grew", "pi is 3.14159", "1234567 items", "user@localhost"])
def test_pii_ignores_numbers_that_are_not_phones(text):
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert not frame.any(axis=None)


def planted(n_good=40):
    records = [rec(i, chat(f"question {i}", f"answer {i}")) for i in range(1, n_good + 1)]
    records += [
        rec(101, chat("question 1", "answer 1")),  # duplicate of line 1
        rec(102, chat("mail bob@corp.example.com", "sure")),
        rec(103, chat("my phone is 555-123-4567", "noted")),
        rec(104, chat("empty answer", "")),
    ]
    return records


def test_validate_quarantines_bad_rows_with_reasons_and_keeps_the_rest(tmp_path):
    records = write_records(tmp_path / "records.jsonl", planted())
    report = validate_records(records, None, tmp_path, max_fraction=0.2, pii_policy="reject")
    quarantine = [json.loads(x) for x in Path(report["quarantine"]).read_text().splitlines()]
    assert report["success"] and report["rows_kept"] == 40 and report["rows_quarantined"] == 4
    assert {q["source"]["line"]: q["reasons"][0].split(":")[0] for q in quarantine} == {
        101: "duplicates_exact", 102: "pii_email", 103: "pii_phone", 104: "format_empty_content"}
    # The report is what reaches MLflow and Prefect: it must not carry the planted values.
    text = (tmp_path / "report.json").read_text()
    assert "bob@corp.example.com" not in text and "555-123-4567" not in text
    assert report["rule_counts"]["pii_email"] == 1


def test_redact_policy_keeps_pii_rows_with_placeholders(tmp_path):
    records = write_records(tmp_path / "records.jsonl", planted())
    report = validate_records(records, None, tmp_path, max_fraction=0.2, pii_policy="redact")
    clean = Path(report["clean"]).read_text()
    assert report["rows_kept"] == 42 and report["pii_redacted_rows"] == 2
    assert "<EMAIL>" in clean and "<PHONE>" in clean and "bob@corp" not in clean


def test_threshold_failure_names_rule_fraction_and_lines(tmp_path):
    records = [rec(i, chat(f"q{i}", "")) for i in range(1, 4)] + [rec(i, chat(f"q{i}", "a")) for i in range(4, 11)]
    report = validate_records(write_records(tmp_path / "r.jsonl", records), None, tmp_path, 0.2, "reject")
    assert not report["success"]
    message = failure_message(report)
    assert "format_empty_content" in message and "30.0% > allowed 20.0%" in message
    assert "data.jsonl:1, data.jsonl:2, data.jsonl:3" in message
    assert issubclass(DataValidationError, RuntimeError)
