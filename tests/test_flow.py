"""The whole flow on the tiny model: the first candidate is promoted, a corrupted one is blocked."""

import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.finetune import finetune_pipeline
from tasks.evaluate import EvalSuiteError
from cli.main import main
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
def test_good_candidate_promoted_then_corrupted_candidate_blocked(tmp_path, tracking, tiny_model, capsys):
    params = load_config("configs/tiny.yaml").model_copy(update={"tracking": tracking, "output_dir": str(tmp_path)})
    client = MlflowClient(tracking.tracking_uri)

    good = finetune_pipeline(params.model_copy(update={"run_name": "good"}))
    assert good.gate == "passed" and good.baseline == "base"
    assert good.rows_kept + good.rows_quarantined == 139 and good.rows_quarantined >= 1  # nothing lost
    assert str(get_alias(client, "test-model", CHAMPION).version) == good.model_version == "1"
    assert (tmp_path / "good" / "summary.json").exists()
    margins = client.get_metric_history(good.mlflow_run_id, "dpo/reward_margin_step")
    assert [m.step for m in margins] == [1, 2]  # DPO ran on the preference file, after SFT
    assert (tmp_path / "good" / "export" / "merged" / "model.safetensors").exists()  # promoted -> exported
    v1 = client.get_model_version("test-model", "1")
    assert v1.tags["gate"] == "passed" and v1.tags["gate.baseline"] == "base" and v1.tags["promotion"] == "gate"
    eval_runs = json.loads(v1.tags["eval_run_ids"])
    assert set(eval_runs["candidate"]) == {"tunegate_domain", "tunegate_general"}
    assert client.get_run(eval_runs["candidate"]["tunegate_general"]).data.tags["tunegate.kind"] == "eval"

    # The corrupted run, through the CLI: it must exit 1 and name the regressed task.
    bad_domain = corrupted_copy(DEMO / "identity.json", tmp_path / "identity_bad.json")
    bad_general = corrupted_copy(DEMO / "alpaca_general.json", tmp_path / "general_bad.json")
    sets = {"run_name": "corrupted", "output_dir": str(tmp_path), "data.domain_files": f"[{bad_domain}]",
            "data.general_files": f"[{bad_general}]", **{f"tracking.{k}": v for k, v in tracking.model_dump().items()}}
    # Judged too, by the tiny model on a local server that decodes under the verdict's schema.
    assert main(["run", "configs/tiny.yaml", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
                 "--local-judge", tiny_model]) == 1
    out = capsys.readouterr()
    assert re.search(r"judge:  win rate \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] by local-judge over \d+ pairs", out.out)
    assert "Gate blocked test-model version 2: regressed on tunegate_general" in out.err
    assert "champion alias did not move" in out.err and "BLOCKED on tunegate_general" in out.out
    assert "PASSED" not in out.out  # the summary is written after the promotion decision, never before

    assert str(get_alias(client, "test-model", CHAMPION).version) == "1"
    v2 = client.get_model_version("test-model", "2")
    assert v2.tags["gate"] == "blocked" and v2.tags["baseline"] == "champion v1"
    assert v2.tags["gate.tunegate_general.bits_per_byte"].startswith("regressed")
    assert v2.tags["gate.regressed"] == "tunegate_general"
    bad = json.loads((tmp_path / "corrupted" / "summary.json").read_text())
    general = bad["eval"]["tunegate_general"]
    assert general["candidate"]["bits_per_byte"] > general["baseline"]["bits_per_byte"] + 0.1
    # The champion's general eval (same adapter, same held-out data) came from the cache; its domain
    # eval did not, because the corrupted run's held-out domain rows differ.
    assert bad["eval_cache_hits"]["baseline"] == ["tunegate_general"]
    assert json.loads(v2.tags["eval_run_ids"])["baseline"]["tunegate_general"] == eval_runs["candidate"][
        "tunegate_general"]
    run = client.get_run(bad["mlflow_run_id"])
    assert run.data.tags["gate"] == "blocked"
    assert {"gate/decision.md", "gate/decision_table.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "gate")}
    side = json.loads(Path(mlflow.artifacts.download_artifacts(  # both models' answers, prompt by prompt
        run_id=run.info.run_id, artifact_path="eval/side_by_side.json", dst_path=str(tmp_path))).read_text())
    assert "candidate" in side["columns"] and "baseline" in side["columns"] and len(side["data"]) >= 10
    decision = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="gate/decision.json", dst_path=str(tmp_path))).read_text())
    row = next(r for r in decision["rows"] if r["task"] == "tunegate_general")
    assert row["verdict"] == "regressed" and row["p_value"] < 0.05 and row["ci_low"] > 0.1

    # The good job again, in a new run folder: data stages, SFT and DPO are Prefect cache hits.
    again = finetune_pipeline(params.model_copy(update={"run_name": "good-again"}))
    assert not (tmp_path / "good-again" / "data").exists() and not (tmp_path / "good-again" / "sft").exists()
    assert again.gate == "passed" and again.rows_kept == good.rows_kept


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_task_whose_data_cannot_be_reached_fails_the_run_before_training(tmp_path, tracking, tiny_model):
    params = load_config("configs/tiny.yaml", ["eval.lm_eval_tasks=[arc_easy]"]).model_copy(
        update={"tracking": tracking, "output_dir": str(tmp_path), "run_name": "offline"})
    with pytest.raises(EvalSuiteError, match="arc_easy"):
        finetune_pipeline(params)
    assert (tmp_path / "offline" / "data" / "train.jsonl").exists() and not (tmp_path / "offline" / "sft").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_full_fine_tune_is_evaluated_registered_promoted_and_then_serves_as_the_baseline(tmp_path, tracking,
                                                                                          tiny_model):
    params = load_config("configs/tiny.yaml", ["sft.method=full", "sft.learning_rate=1e-4", "sft.max_steps=6"])
    params = params.model_copy(update={"tracking": tracking, "output_dir": str(tmp_path), "run_name": "full"})
    client = MlflowClient(tracking.tracking_uri)

    full = finetune_pipeline(params)
    assert full.gate == "passed" and full.baseline == "base"
    v1 = client.get_model_version("test-model", "1")
    assert v1.tags["weights"] == "model" and v1.tags["method"] == "full" and v1.source.startswith("models:/")
    files = {a.path for a in client.list_artifacts(full.mlflow_run_id, "model")}
    assert "model/model.safetensors" in files and "model/adapter_config.json" not in files
    candidate, base = (json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=full.mlflow_run_id, artifact_path=f"eval/{name}.json", dst_path=str(tmp_path))).read_text())
        for name in ("candidate", "baseline"))
    assert candidate["adapter"] is None and candidate["model"] == str(tmp_path / "full" / "dpo" / "model")
    # Scored as the whole fine-tuned model, not as the base model it started from.
    assert candidate["model_hash"] == v1.tags["model_hash"] != base["model_hash"]
    general = full.eval["tunegate_general"]
    assert general["candidate"]["bits_per_byte"] != general["baseline"]["bits_per_byte"]
    assert (tmp_path / "full" / "export" / "merged" / "model.safetensors").exists()

    # A LoRA run next: the full champion is downloaded as a whole model and is the baseline. Its files are
    # byte-identical to the candidate scored above, so both its evaluations come from the cache.
    lora = finetune_pipeline(params.model_copy(update={"run_name": "lora", "sft": load_config(
        "configs/tiny.yaml").sft}))
    assert lora.baseline == "champion v1"
    assert sorted(lora.eval_cache_hits["baseline"]) == ["tunegate_domain", "tunegate_general"]
    champion_dir = tmp_path / "lora" / "baseline" / "champion-v1"
    assert (next(champion_dir.rglob("model.safetensors"))).exists() and not list(champion_dir.rglob("adapter_*"))
    assert client.get_model_version("test-model", "2").tags["weights"] == "adapter"
    # Both versions the flow registered are MLflow Models that answer an OpenAI-style chat request.
    for version in ("1", "2"):
        reply = mlflow.pyfunc.load_model(f"models:/test-model/{version}").predict(
            {"messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 8})[0]
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1
        assert reply["choices"][0]["message"]["role"] == "assistant"
