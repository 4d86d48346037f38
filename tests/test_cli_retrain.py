"""`tunegate feedback status` and `tunegate retrain --approve/--reject`: the loop operated from the command line."""

import json

import pytest

from cli.main import main
from poison import poisoned_window, write_curated, write_window


@pytest.fixture()
def cli_sets(tmp_path, tracking):
    """A tiny config's overrides: curated identity/port data, feedback logs of our own, an isolated store."""
    curated = write_curated(tmp_path / "curated")
    sets = {"data.domain_files": json.dumps(curated), "data.general_files": "[]", "data.preference_files": "[]",
            "data.eval_fraction": "0.25", "data.min_eval_per_stratum": "4", "sft.max_steps": "4",
            "dpo.enabled": "false", "data.checks.max_fraction": "{duplicates_near: 1.0}",  # the window is paraphrases
            "output_dir": str(tmp_path / "out"), "feedback.traces": "false",
            "feedback.logs": str(tmp_path / "logs" / "*.jsonl"), "feedback.watermark_file": str(tmp_path / "wm.json"),
            "feedback.work_dir": str(tmp_path / "fb"),
            **{f"tracking.{k}": v for k, v in tracking.model_dump().items() if v is not None}}
    return ["--config", "configs/tiny.yaml", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]


@pytest.mark.usefixtures("prefect_harness")
def test_status_shows_the_pending_window_and_retrain_settles_it(tmp_path, cli_sets, capsys):
    window = poisoned_window()
    down = sum(r["rating"] == "down" for r in window)
    write_window(tmp_path / "logs", window)
    assert main(["feedback", "status", *cli_sets]) == 0
    out = capsys.readouterr().out
    assert "watermark: none yet" in out
    assert f"since the watermark: {len(window)} records ({len(window) - down} up, {down} down, {down} corrections)" in out
    assert "production regression set: version 0, 0 prompts" in out and "PENDING" not in out

    # The window contradicts the curated facts: the retrain stops before training and says where to look.
    assert main(["retrain", *cli_sets]) == 1
    assert "stopped for review before training" in capsys.readouterr().err
    assert main(["feedback", "status", *cli_sets]) == 0
    out = capsys.readouterr().out
    label = "20261121T0000-20261121T2302"
    assert f"PENDING REVIEW: window {label}" in out and f"approve: tunegate retrain --approve {label}" in out
    assert "why: Contradiction check" in out and f"in the pending window: {len(window)} records" in out
    assert main(["feedback", "status", "--json", *cli_sets]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"]["label"] == label and status["watermark"] == {"timestamp": None, "run": None,
                                                                           "outcome": None, "written_at": None}

    assert main(["retrain", "--reject", label, *cli_sets]) == 2  # a decision needs a note
    assert "--note" in capsys.readouterr().err
    assert main(["retrain", "--reject", label, "--note", "ana: poisoned", *cli_sets]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "rejected"
    assert main(["feedback", "status", *cli_sets]) == 0
    out = capsys.readouterr().out
    assert "PENDING" not in out and "rejected by review: ana: poisoned" in out and "since the watermark: 0 records" in out

    # The same kind of window again, approved this time: its rows train and the run reaches a gate decision.
    write_window(tmp_path / "logs", poisoned_window("2026-11-22"), "2026-11-22")
    assert main(["retrain", *cli_sets]) == 1
    capsys.readouterr()
    label = "20261122T0000-20261122T2302"
    code = main(["retrain", "--approve", label, "--note", "ben: the product really was renamed", *cli_sets])
    out, err = capsys.readouterr()
    assert out.strip(), err[-3000:]
    lines = out.splitlines()  # the result JSON comes last, after the trainer's log lines
    result = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{"):]))
    assert code == (0 if result["status"] == "promoted" else 1)
    assert result["status"] in ("promoted", "blocked", "needs_review") and result["records"] == len(window)
    mark = json.loads((tmp_path / "wm.json").read_text())
    assert "pending" not in mark and mark["timestamp"] == result["window"][1]
