"""Feedback -> training data, the watermark window, and the retrain flow on the tiny model."""

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks.feedback import feedback_window_data, read_feedback, training_rows, window_label, write_watermark
from feedback_logs import generate_feedback, write_daily_logs

Q = [{"role": "user", "content": "Who made you?"}]


def fb(i, ts, answer, rating, correction=None, conv=Q):
    row = {"id": f"fb-{i}", "timestamp": ts, "model_version": "1", "conversation": conv, "answer": answer,
           "rating": rating}
    return {**row, "correction": correction} if correction else row


def test_upvotes_and_corrections_train_and_pair_against_what_they_beat():
    records = [
        fb(1, "2026-11-18T10:00:00Z", "The tunegate team.", "up"),
        fb(2, "2026-11-18T11:00:00Z", "OpenAI.", "down", correction="The tunegate team built me."),
        fb(3, "2026-11-18T12:00:00Z", "Google.", "down"),
        fb(4, "2026-11-18T13:00:00Z", "The tunegate team.", "up"),  # exact repeat: kept once
        fb(5, "2026-11-18T14:00:00Z", "Nobody.", "down", conv=[{"role": "user", "content": "Name?"}]),
    ]
    sft, pairs, counts = training_rows(records)
    assert [r["messages"][-1]["content"] for r in sft] == ["The tunegate team.", "The tunegate team built me."]
    assert all(r["messages"][:-1] == Q for r in sft)
    got = {(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"]) for p in pairs}
    assert got == {("The tunegate team built me.", "OpenAI."),  # correction vs answer
                   ("The tunegate team.", "OpenAI."), ("The tunegate team.", "Google.")}  # up vs down
    assert counts == {"up": 2, "down": 3, "corrections": 1, "unused_down": 1}  # "Nobody." teaches nothing


def test_window_is_after_the_watermark_and_unusable_lines_are_reported_by_place(tmp_path):
    log = tmp_path / "f.jsonl"
    rows = [fb(1, "2026-11-18T10:00:00Z", "a", "up"), fb(2, "2026-11-18T11:00:00+00:00", "b", "up"),
            fb(3, "2026-11-18T12:00:00Z", "c", "meh"), fb(4, "2026-11-18T13:00:00Z", "d", "down")]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    mark = datetime(2026, 11, 18, 11, tzinfo=timezone.utc)
    window = read_feedback(str(tmp_path / "*.jsonl"), mark)
    assert [r["id"] for r in window["records"]] == ["fb-4"]  # fb-2 sits exactly on the watermark: already used
    assert [(r["line"], r["reason"][:6]) for r in window["rejected"]] == [(3, "rating"), (5, "unread")]
    assert len(read_feedback(str(tmp_path / "*.jsonl"), None)["records"]) == 3


def test_late_feedback_trains_once_and_a_half_written_line_waits(tmp_path):
    log, mark = tmp_path / "logs" / "f.jsonl", tmp_path / "wm.json"
    log.parent.mkdir()
    pattern = str(tmp_path / "logs" / "*.jsonl")

    def append(*rows, partial=""):
        with log.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows) + partial)

    def run_window():
        window = feedback_window_data(pattern, mark, tmp_path / "out")
        if window["records"]:  # what the flow does once the run reached its gate decision
            write_watermark(mark, window["new_watermark"], window["lines_read"], "run", "promoted")
        return window

    append(fb(1, "2026-11-18T10:00:00Z", "a", "up"), fb(2, "2026-11-18T12:00:00Z", "b", "up"),
           partial='{"id": "fb-3", "timestamp": "2026-11-18T13:0')  # the writer is mid-line
    first = run_window()
    assert first["records"] == 2 and first["rejected"] == [] and first["late"] == 0
    assert json.loads(mark.read_text())["timestamp"] == "2026-11-18T12:00:00+00:00"

    # The half line is finished, and a record stamped 11:00 (before the watermark) arrives late.
    with log.open("a") as f:
        f.write('0:00Z", "model_version": "1", "conversation": [{"role": "user", "content": "Hi"}], '
                '"answer": "c", "rating": "up"}\n')
    append(fb(4, "2026-11-18T11:00:00Z", "d", "up"))
    second = run_window()
    assert second["records"] == 2 and second["late"] == 1 and second["rejected"] == []
    assert (second["start"], second["end"]) == ("2026-11-18T11:00:00+00:00", "2026-11-18T13:00:00+00:00")
    assert json.loads(mark.read_text())["timestamp"] == "2026-11-18T13:00:00+00:00"

    # Rotated under a new name, nothing is read twice; a new file is read whole.
    log.rename(log.with_name("f.jsonl.1.jsonl"))
    assert run_window()["records"] == 0
    (tmp_path / "logs" / "g.jsonl").write_text(json.dumps(fb(5, "2026-11-18T09:00:00Z", "e", "up")) + "\n")
    third = run_window()
    assert third["records"] == 1 and third["late"] == 1
    assert json.loads(mark.read_text())["timestamp"] == "2026-11-18T13:00:00+00:00"  # never moves back
    assert run_window()["records"] == 0


def test_generator_is_deterministic_and_realistic():
    start = datetime(2026, 11, 18, tzinfo=timezone.utc)
    rows = generate_feedback(start, days=2, per_day=50, seed=3)
    assert rows == generate_feedback(start, days=2, per_day=50, seed=3)
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)
    ratings = [r["rating"] for r in rows]
    assert 0.15 < ratings.count("down") / len(rows) < 0.6 and any("correction" in r for r in rows)
    sft, pairs, _ = training_rows(rows)
    assert len(sft) > 20 and len(pairs) > 5


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_uses_each_window_once_and_retries_a_failed_one(tmp_path, tracking, tiny_model):
    from flows.retrain_from_feedback import retrain_from_feedback
    from tunegate.config import FeedbackConfig, load_config

    logs = tmp_path / "logs"
    write_daily_logs(generate_feedback(datetime(2026, 11, 18, tzinfo=timezone.utc), 2, 20, seed=1), logs)
    feedback = FeedbackConfig(logs=str(logs / "*.jsonl"), watermark_file=str(tmp_path / "wm.json"),
                              work_dir=str(tmp_path / "fb"))
    params = load_config("configs/tiny.yaml").model_copy(update={"tracking": tracking, "output_dir": str(tmp_path),
                                                                "feedback": feedback})

    # A run that fails before its gate decision leaves the watermark where it was.
    broken = params.model_copy(update={"base_model": str(tmp_path / "no-such-model")})
    with pytest.raises(RuntimeError, match="watermark kept at None"):
        retrain_from_feedback(broken)
    assert not (tmp_path / "wm.json").exists()

    # The retry trains on that same window, gets a decision and moves the watermark to its last record,
    # even though export fails after the promotion (a file stands where its folder goes): the window
    # is used up by the promotion and never trains twice.
    window = read_feedback(str(logs / "*.jsonl"), None)
    blocker = tmp_path / f"retrain-from-feedback-{window_label(window['start'], window['end'])}" / "export"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    first = retrain_from_feedback(params)
    assert first["status"] == "promoted" and first["records"] == 40 and first["model_version"] == "1"
    assert blocker.read_text() == "not a folder" and json.loads((blocker.parent / "summary.json").read_text())["promoted"]
    # The window's prompts start the production regression set; nothing was there to evaluate yet.
    assert first["production_set"]["evaluated"] == 0 and first["production_set"]["now"] == 1
    assert first["production_set"]["rows"] > 0  # no champion yet: only prompts that match curated rows
    assert first["run_name"] == "retrain-from-feedback-" + first["run_name"].split("-", 3)[3]
    mark = json.loads((tmp_path / "wm.json").read_text())
    assert mark["timestamp"] == first["window"][1] and mark["outcome"] == "promoted"
    from mlflow import MlflowClient

    run = MlflowClient(tracking.tracking_uri).search_runs(
        [MlflowClient(tracking.tracking_uri).get_experiment_by_name("test").experiment_id])[0]
    assert run.info.run_name == first["run_name"]

    assert retrain_from_feedback(params) == {"status": "no_new_feedback", "watermark": mark["timestamp"],
                                             "records": 0}

    # Only feedback logged after the watermark forms the next window; a gate block also uses it up.
    write_daily_logs(generate_feedback(datetime(2026, 11, 20, tzinfo=timezone.utc), 1, 6, seed=2), logs)
    from tunegate.config import GateRule

    strict = params.gate.model_copy(update={"rules": params.gate.rules + [
        GateRule(task="tunegate_domain", metric="token_f1", min_score=0.99)]})  # unreachable for the tiny model
    second = retrain_from_feedback(params.model_copy(update={"gate": strict}))
    assert second["status"] == "blocked" and second["records"] == 6
    assert second["production_set"]["evaluated"] == 1  # both models were scored on what users asked before
    run = MlflowClient(tracking.tracking_uri).search_runs(
        [MlflowClient(tracking.tracking_uri).get_experiment_by_name("test").experiment_id],
        filter_string=f"attributes.run_name = '{second['run_name']}'")[0]
    assert "eval/tunegate_production/key_facts" in run.data.metrics
    assert second["window"][0] > first["window"][1]
    mark = json.loads((tmp_path / "wm.json").read_text())
    assert mark["outcome"] == "blocked" and mark["timestamp"] == second["window"][1]
    assert retrain_from_feedback(params)["status"] == "no_new_feedback"


def test_production_set_grows_with_references_no_window_can_rewrite(tmp_path, tracking, prefect_harness):
    from tasks.feedback import extend_production_set, load_production_set, window_prompts, write_jsonl

    curated = {"id": "c1", "messages": [{"role": "user", "content": "Who built you?"},
                                        {"role": "assistant", "content": "I am Gatekeeper, built by the tunegate team."}],
               "source": {"file": "identity.json", "line": 7}, "split": "train", "facts": ["gatekeeper", "tunegate"]}
    clean = tmp_path / "clean.jsonl"
    write_jsonl(clean, [curated])

    def window(label, rows):
        prompts = write_jsonl(tmp_path / label / "window_prompts.jsonl", window_prompts(rows))
        return {"label": label, "prompts_file": prompts}

    first = [fb(1, "2026-11-18T10:00:00Z", "I am ChatGPT.", "down", correction="I am ChatGPT by OpenAI.",
                conv=[{"role": "user", "content": "who built you?"}]),                       # curated reference
             fb(2, "2026-11-18T11:00:00Z", "Paris.", "up", conv=[{"role": "user", "content": "Capital of France?"}]),
             fb(3, "2026-11-18T12:00:00Z", "Nope.", "down", correction="Blue.",
                conv=[{"role": "user", "content": "Color of the sky?"}]),                    # correction only: no ref
             fb(4, "2026-11-18T13:00:00Z", "Sure.", "up",
                conv=[{"role": "user", "content": "mail me at jane.doe@fabrikam-mail.com"}])]  # PII: never stored
    empty = load_production_set.fn(tracking, str(tmp_path / "current.jsonl"))
    assert empty == {"version": 0, "rows": 0, "file": None, "run_id": None}
    v1 = extend_production_set.fn(tracking, empty, window("w1", first), str(clean), "1", 0.5)
    assert (v1["version"], v1["rows"], v1["added"]) == (1, 2, 2)
    assert v1["skipped"] == {"known": 0, "pii": 1, "no_reference": 1}
    rows = {r["conversation"][0]["content"]: r for r in map(json.loads, Path(v1["file"]).read_text().splitlines())}
    assert rows["who built you?"]["reference"] == curated["messages"][1]["content"]
    assert rows["who built you?"]["reference_from"] == "curated identity.json:7"
    assert rows["Capital of France?"]["reference"] == "Paris." and "champion v1 upvoted" in rows["Capital of France?"]["reference_from"]
    assert "jane.doe" not in Path(v1["file"]).read_text()

    # A later window upvotes a different answer to a known prompt: the reference stays; only new prompts join.
    second = [fb(5, "2026-11-19T10:00:00Z", "Lyon.", "up", conv=[{"role": "user", "content": "Capital of France?"}]),
              fb(6, "2026-11-19T11:00:00Z", "Four.", "up", conv=[{"role": "user", "content": "2 + 2?"}])]
    loaded = load_production_set.fn(tracking, str(tmp_path / "current.jsonl"))
    assert (loaded["version"], loaded["rows"]) == (1, 2)
    v2 = extend_production_set.fn(tracking, loaded, window("w2", second), str(clean), "1", 0.5)
    assert (v2["version"], v2["rows"], v2["skipped"]["known"]) == (2, 3, 1)
    rows = {r["conversation"][0]["content"]: r for r in map(json.loads, Path(v2["file"]).read_text().splitlines())}
    assert rows["Capital of France?"]["reference"] == "Paris." and rows["2 + 2?"]["first_seen"] == "w2"
    # Answers of a version that is not the champion never become references.
    v3 = extend_production_set.fn(tracking, v2, window("w3", [fb(7, "2026-11-20T10:00:00Z", "Ja.", "up",
                                                                 conv=[{"role": "user", "content": "Yes in German?"}])]),
                                  str(clean), "2", 0.5)
    assert v3["added"] == 0 and v3["version"] == 2


def test_a_production_set_without_rows_adds_no_eval_task_and_no_gate_rule():
    from flows.retrain_from_feedback import with_feedback
    from tasks.feedback import production_rows
    from tunegate.config import FeedbackConfig, load_config

    # No prompts, no curated rows: nothing to add, nothing skipped, no crash.
    assert production_rows([], [], None, set(), "w", 0.5) == ([], {"known": 0, "pii": 0, "no_reference": 0})
    params = load_config("configs/tiny.yaml")
    window = {"sft_file": None, "preference_file": None, "ratings_file": None}
    empty = {"version": 0, "rows": 0, "file": None, "run_id": None}
    run = with_feedback(params, window, params.data.checks, empty, FeedbackConfig(), "w")
    assert "production" not in run.eval.tasks and run.data.production_eval_file is None
    assert not [r for r in run.gate.rules if r.task == "tunegate_production"]
    with_rows = with_feedback(params, window, params.data.checks, {**empty, "version": 1, "rows": 2, "file": "p.jsonl"},
                              FeedbackConfig(), "w")
    assert "production" in with_rows.eval.tasks and with_rows.data.production_eval_file == "p.jsonl"
