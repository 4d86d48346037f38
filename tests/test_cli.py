import json

from cli.main import format_summary, main

from conftest import DEMO


def test_validate_command_exit_codes_follow_the_thresholds(tmp_path, capsys):
    assert main(["validate", str(DEMO / "identity.json"), "--out", str(tmp_path / "ok")]) == 0
    assert "| sft | duplicates | duplicates_exact | 0 |" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "write me at a@b.io"}]}
            for i in range(5)]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate", str(bad), "--out", str(tmp_path / "bad")]) == 1
    assert main(["validate", str(bad), "--out", str(tmp_path / "redacted"), "--pii-policy", "redact"]) == 0
    assert "<EMAIL>" in (tmp_path / "redacted" / "clean.jsonl").read_text()


def test_summary_names_the_gate_outcome_and_the_ui_command():
    summary = {"rows_kept": 9, "rows_quarantined": 1, "quarantine_file": "q.jsonl", "train_steps": 2, "train_loss": 1.25,
               "baseline": "champion v1", "eval_cache_hits": {"baseline": ["tunegate_general"], "candidate": []},
               "gate": "blocked", "regressed": ["tunegate_general"], "model_version": "3",
               "mlflow_run_id": "abc", "mlflow_ui": "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db",
               "eval": {"tunegate_general": {"baseline": {"bits_per_byte": 1.0}, "candidate": {"bits_per_byte": 1.5}}}}
    text = format_summary(summary, 90, [("sft", 60.0)])
    assert "BLOCKED on tunegate_general" in text and "1.0000 -> 1.5000" in text
    assert "candidate vs champion v1 (from cache: tunegate_general)" in text
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in text and "sft 60s" in text


def test_validate_runs_one_suite_alone_and_checks_preference_files(tmp_path, capsys):
    from conftest import ROOT

    dpo = str(ROOT / "data" / "llamafactory" / "dpo_en_demo.json")
    assert main(["validate", str(DEMO / "identity.json"), "--preferences", dpo, "--only", "pii",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert {s["suite"] for s in report["suites"]} == {"pii", "preference_pii"}
    assert report["preferences_in"] == 300 and report["rows_in"] == 91
    assert len((tmp_path / "clean_preferences.jsonl").read_text().splitlines()) == report["preferences_kept"]
    assert "| preference | preference_pii |" in capsys.readouterr().out


def test_summary_shows_the_judges_win_rate_and_reviewers_preferences():
    from tasks.judge import judge_summary
    from test_judge import CFG, pairs_with

    # 8 wins, 2 losses, 2 position-following ties, 3 without a verdict (as in test_judge).
    judged = judge_summary(pairs_with([("A", "B")] * 8 + [("B", "A")] * 2 + [("A", "A"), ("B", "B")] + [(None, "B")] * 3),
                           CFG)
    summary = {"rows_kept": 9, "rows_quarantined": 1, "quarantine_file": "q.jsonl", "train_steps": 2, "train_loss": 1.25,
               "baseline": "base model", "eval_cache_hits": {"baseline": [], "candidate": []},
               "gate": "passed", "regressed": [], "model_version": "3", "mlflow_run_id": "abc", "mlflow_ui": "mlflow ui",
               "eval": {"judge": {"baseline": {"win_rate": 0.5}, "candidate": {"win_rate": 0.75}}}, "judge": judged,
               "preferences": {"candidate": 2, "baseline": 1, "tie": 0, "other": 0, "prompts": 3, "reviewers": 1}}
    text = format_summary(summary, 90, [("sft", 60.0)])
    assert "judge/win_rate: 0.5000 -> 0.7500" in text
    line = next(x for x in text.splitlines() if x.startswith("  judge:"))
    assert line.startswith("  judge:  win rate 0.750 [") and "by judge-model over 15 pairs: 8 wins, 2 ties, 2 losses, " \
        "3 no verdict; sign test p=0.109, position bias 17%" in line
    assert "review: 1 reviewer(s) preferred candidate 2, baseline 1, tie 0 on 3 prompt(s)" in text
    assert "judge:  " not in format_summary({**summary, "judge": None}, 90, [])


def test_ui_refuses_a_tracking_server_and_says_where_its_ui_is(capsys):
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5055"]) == 2
    assert "http://127.0.0.1:5055 is a tracking server: open it in a browser" in capsys.readouterr().err


def test_the_cli_gives_a_first_ephemeral_prefect_server_more_than_20_s_to_start():
    """CI failed when a fresh PREFECT_HOME's migrations outlasted Prefect's 20 s default on 2 busy cores."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import cli.main; from prefect.settings import get_current_settings; "
            "print(get_current_settings().server.ephemeral.startup_timeout_seconds)")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) == 120
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "45"  # the user's own setting wins
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) == 45
