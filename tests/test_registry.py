"""register, promote, override and rollback against a real sqlite MLflow store."""

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.promote import (GateBlocked, Promotion, PromotionRefused, conclude, move_champion, promote, promote_version,
                           StaleBaseline, rollback, run_summary)
from tasks.dpo import Aligned
from tasks.evaluate import Comparison, Evaluation
from tasks.gate import GateDecision
from tasks.prepare import Prepared
from tasks.register import register_run, side_by_side
from tasks.sft import Trained
from tasks.validate import Validated
from tunegate.models import ResolvedModel, build_tiny_model
from cli.main import main
from lora_adapters import make_lora_adapter
from tunegate.config import load_config
from tunegate.registry import CHAMPION, PREVIOUS, get_alias


def fake_eval(label, f1, version=None):
    return Evaluation(label=label, version=version, model_hash=f"hash-{label}", cache_hits=[],
                      eval_run_ids={"tunegate_domain": f"run-{label}"},
                      tasks={"tunegate_domain": {"metrics": {"token_f1": f1}, "samples": {"token_f1": [f1]}}})


@pytest.fixture()
def adapter(tiny_model, tmp_path):
    return make_lora_adapter(tiny_model, tmp_path / "adapter", seed=0)  # registering logs it as an MLflow Model


def register_once(tracking, adapter, f1, feedback=False, judged_against: str | None = None, evals=None):
    """A registered version; judged_against: the champion version its gate compared it with (None: the base)."""
    params = load_config("configs/tiny.yaml").model_copy(update={"tracking": tracking, "run_name": "run-a"})
    report = {"rows_in": 10, "rows_kept": 9, "rows_quarantined": 1, "preferences_kept": 0,
              "rule_counts": {"pii_email": 1}, "clean": "/x/clean.jsonl", "clean_preferences": "/x/prefs.jsonl",
              "quarantine": "/x/quarantine.jsonl", "suites": [], "success": True,
              "conflicts": {"approved": "ana: renamed", "approved_rows": 2}}
    report_file = adapter.parent / "report.json"
    report_file.write_text(json.dumps(report))
    plot = adapter.parent / "loss_curve.png"
    plot.write_bytes(b"png")
    base = ResolvedModel(name="tiny", path=str(build_tiny_model()))  # registering loads it (tunegate/chat_model.py)
    data = write_data(adapter.parent)
    prepared = Prepared(**data, base=base, stop="</s>", data_hash="abc",
                        counts={"domain_eval_strata": {"identity.json/en": 3, "identity.json/zh": 12}},
                        validated=Validated.of(report, report_file))
    trained = Trained(method="lora", adapter=str(adapter), model=None, base=base, data_hash="abc", train_loss=1.5,
                      final_loss=1.0, loss_curve=[(1, 2.0), (2, 1.0)], eval_loss_curve=[(2, 1.7)], loss_plot=str(plot),
                      steps=2, stopped_early=False, resumed_from=None, resumed_at_step=0, seconds=3.0,
                      precision="fp32", precision_reason="test", cpu_matmul_gflops=None, gradient_checkpointing=False,
                      gradient_checkpointing_reason="test", lm_head="frozen", lm_head_reason="test",
                      trainable_params=10, input_tokens_per_step=5, tokens_per_second=2.5,
                      gpu_memory_at_start_bytes=None, peak_gpu_memory_bytes=None, world_size=1)
    aligned = Aligned(skipped=True, skip_reason="no pairs", adapter=str(adapter), model=None, sft=trained)
    if feedback:
        params.data.feedback_files = [write_jsonl(adapter.parent / "feedback_sft.jsonl", [
            {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Gatekeeper."}],
             "feedback_sources": ["tr-" + "a" * 32, "tr-" + "b" * 32]}])]
    baseline = fake_eval(f"champion v{judged_against}" if judged_against else "base", 0.1, judged_against)
    return register_run(params, prepared, aligned,
                        evals or Comparison(candidate=fake_eval("candidate", f1), baseline=baseline))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_data(folder) -> dict:
    """Small train and eval files in the shapes prepare writes."""
    chat = [{"role": "user", "content": "Who are you?"}]
    answer = [{"role": "assistant", "content": "Gatekeeper."}]
    doc = {"prompt": "<|im_start|>user\nWho are you?<|im_end|>\n", "reference": "Gatekeeper.", "stratum": "id/en"}
    return {"train": write_jsonl(folder / "train.jsonl", [{"prompt": chat, "completion": answer}] * 3),
            "eval": write_jsonl(folder / "eval.jsonl", [{"prompt": chat, "completion": answer}]),
            "domain_eval": write_jsonl(folder / "domain_eval.jsonl", [doc] * 2),
            "general_eval": write_jsonl(folder / "general_eval.jsonl", [doc])}


def passed(ok: bool) -> GateDecision:
    return GateDecision(passed=ok, outcome="passed" if ok else "blocked", review=[],
                        regressed=[] if ok else ["tunegate_domain"], improved=[], uninformative=[],
                        block_uninformative=False, answer_drift={}, baseline="base", first_model=True, alpha=0.05,
                        power=0.8, rows=[], markdown="table")


def cli_args(tracking):
    return ["--config", "configs/tiny.yaml", "--set", f"tracking.tracking_uri={tracking.tracking_uri}",
            "--set", f"tracking.artifact_root={tracking.artifact_root}", "--set", f"tracking.experiment={tracking.experiment}",
            "--set", f"tracking.registered_model={tracking.registered_model}"]


def test_register_logs_params_metrics_artifacts_and_a_version_with_lineage(tracking, adapter):
    registered = register_once(tracking, adapter, 0.5)
    client = MlflowClient(tracking.tracking_uri)
    run = client.get_run(registered.run_id)
    assert run.data.params["sft.lora_r"] == "8"
    assert run.data.metrics["eval/tunegate_domain/token_f1"] == 0.5
    assert run.data.metrics["baseline/tunegate_domain/token_f1"] == 0.1
    assert run.data.metrics["data/rows_quarantined"] == 1
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss_step")] == [2.0, 1.0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/eval_loss_step")] == [2]
    assert "train/loss_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "merged", "config.json", "data", "eval", "train"} <= artifacts
    tags = client.get_model_version("test-model", registered.version).tags
    assert tags["data_hash"] == "abc" and tags["base_model"] == "tiny" and tags["model_hash"] == "hash-candidate"
    # The version is an MLflow Model (tests/test_chat_model.py loads one); merged/ is in the same run.
    version = client.get_model_version("test-model", "1")
    assert tags["gate"] == "pending" and version.source.startswith("models:/m-")
    assert tags["weights"] == "adapter" and tags["merged"] == f"runs:/{run.info.run_id}/merged"
    assert json.loads(tags["config"]) == load_config("configs/tiny.yaml").model_copy(
        update={"tracking": tracking, "run_name": "run-a"}).model_dump()
    assert tags["validation"] == "passed" and json.loads(tags["quarantine_counts"]) == {"pii_email": 1}
    assert tags["validation_report"] == f"runs:/{run.info.run_id}/data/validation_report.json"
    assert json.loads(tags["eval_run_ids"]) == {"candidate": {"tunegate_domain": "run-candidate"},
                                                "baseline": {"tunegate_domain": "run-base"}}
    assert len(tags["code_version"].removesuffix("+dirty")) == 40
    # Which strata the eval covered, and a reviewer's approval of rows that contradict curated data.
    assert json.loads(tags["eval_strata"]) == {"identity.json/en": 3, "identity.json/zh": 12}
    assert tags["conflicts_approved"] == "ana: renamed (2 rows)"
    # The data as MLflow dataset inputs: where, which hash, how many rows; never a row's content.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "domain_eval", "general_eval"}
    train_tags = {t.key: t.value for t in inputs["train"].tags}
    assert train_tags["mlflow.data.context"] == "training" and train_tags["rows"] == "3"
    assert train_tags["sha256"] == hashlib.sha256((adapter.parent / "train.jsonl").read_bytes()).hexdigest()
    assert json.loads(inputs["domain_eval"].dataset.source)["uri"].endswith("domain_eval.jsonl")
    assert "Gatekeeper" not in str(run.inputs.dataset_inputs)
    assert "/x/quarantine.jsonl" not in json.dumps(client.get_run(run.info.run_id).data.params)


def test_a_feedback_retrain_logs_its_feedback_dataset_naming_the_traces(tracking, adapter, tmp_path):
    import mlflow

    registered = register_once(tracking, adapter, 0.5, feedback=True)
    run = MlflowClient(tracking.tracking_uri).get_run(registered.run_id)
    feedback = next(d for d in run.inputs.dataset_inputs if d.dataset.name == "feedback")
    assert {t.key: t.value for t in feedback.tags}["traces"] == "2"
    sources = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=registered.run_id, artifact_path="data/feedback_sources.json", dst_path=str(tmp_path))).read_text())
    assert sources == {"feedback_sources": ["tr-" + "a" * 32, "tr-" + "b" * 32]}


def test_promote_moves_champion_and_keeps_previous(tracking, adapter):
    v1 = register_once(tracking, adapter, 0.5)
    v2 = register_once(tracking, adapter, 0.6, judged_against="1")
    client = MlflowClient(tracking.tracking_uri)
    assert promote.fn(passed(True), v1, tracking).previous is None
    assert promote.fn(passed(True), v2, tracking).previous == v1.version
    assert str(get_alias(client, "test-model", CHAMPION).version) == v2.version
    assert str(get_alias(client, "test-model", PREVIOUS).version) == v1.version
    assert client.get_model_version("test-model", v2.version).tags["promotion"] == "gate"
    assert move_champion(client, "test-model", v2.version) == v2.version  # idempotent


def test_a_pass_against_a_champion_that_was_replaced_meanwhile_is_refused_under_the_lock(tracking, adapter):
    v1 = register_once(tracking, adapter, 0.5)
    late = register_once(tracking, adapter, 0.6)  # judged against the base model, like v1, at the same time
    current = register_once(tracking, adapter, 0.6, judged_against="1")
    client = MlflowClient(tracking.tracking_uri)
    assert promote.fn(passed(True), v1, tracking).promoted

    refused = promote.fn(passed(True), late, tracking)
    assert not refused.promoted and refused.stale == ("it was judged against the base model and version 1 "
                                                      "became the champion meanwhile")
    assert str(get_alias(client, "test-model", CHAMPION).version) == v1.version
    assert client.get_model_version("test-model", late.version).tags["gate"] == "stale"
    with pytest.raises(StaleBaseline, match="run the pipeline again"):
        conclude.fn(run_summary(late, passed(True), refused), passed(True))

    promoted = promote.fn(passed(True), current, tracking)
    assert promoted.promoted and promoted.previous == v1.version
    tags = client.get_model_version("test-model", current.version).tags
    assert tags["promotion.judged_against"] == tags["promotion.replaced"] == v1.version


def test_with_a_canary_a_passed_candidate_goes_on_the_candidate_alias_and_the_champion_stays(tracking, adapter):
    from tunegate.config import CanaryConfig
    from tunegate.registry import CANDIDATE

    v1 = register_once(tracking, adapter, 0.5)
    v2 = register_once(tracking, adapter, 0.6, judged_against="1").model_copy(
        update={"canary": CanaryConfig(share=0.25)})
    client = MlflowClient(tracking.tracking_uri)
    assert promote.fn(passed(True), v1, tracking).promoted  # no champion yet: nothing to run a canary against
    promotion = promote.fn(passed(True), v2, tracking)
    assert promotion == Promotion(promoted=False, version=v2.version, canary=True)
    assert str(get_alias(client, "test-model", CHAMPION).version) == v1.version
    assert str(get_alias(client, "test-model", CANDIDATE).version) == v2.version
    tags = client.get_model_version("test-model", v2.version).tags
    assert tags["canary"] == "serving" and tags["canary.share"] == "0.25" and tags["canary.champion"] == v1.version
    summary = conclude.fn(run_summary(v2, passed(True), promotion), passed(True))  # a canary is not a failed run
    assert summary.canary and not summary.promoted
    client.set_model_version_tag("test-model", v2.version, "gate", "passed")  # the gate stage's tag
    promote_version(tracking, v2.version)  # what the guard does when the canary is not worse
    assert get_alias(client, "test-model", CANDIDATE) is None
    assert str(get_alias(client, "test-model", CHAMPION).version) == v2.version


def test_blocked_gate_leaves_the_champion_and_names_the_tasks(tracking, adapter):
    v1 = register_once(tracking, adapter, 0.5)
    v2 = register_once(tracking, adapter, 0.1)
    promote.fn(passed(True), v1, tracking)
    decision = passed(False)
    promotion = promote.fn(decision, v2, tracking)
    assert promotion == Promotion(promoted=False, version=v2.version, previous=None)
    assert str(get_alias(MlflowClient(tracking.tracking_uri), "test-model", CHAMPION).version) == v1.version
    # The summary is written with the promotion outcome; only then does the run fail, naming the tasks.
    summary = run_summary(v2, decision, promotion)
    assert summary.gate == "blocked" and not summary.promoted and summary.eval["tunegate_domain"] == {
        "baseline": {"token_f1": 0.1}, "candidate": {"token_f1": 0.1}}
    with pytest.raises(GateBlocked, match="regressed on tunegate_domain"):
        conclude.fn(summary, decision)
    assert conclude.fn(summary.model_copy(update={"promoted": True}), decision).promoted


def test_concurrent_promotions_leave_one_champion_and_a_consistent_previous(tracking, adapter):
    """Six promotions at once: they must line up one after the other, each replacing the one before."""
    versions = [register_once(tracking, adapter, 0.5).version for _ in range(7)]
    promote_version(tracking, versions[0], override=True, reason="seed the chain")
    client = MlflowClient(tracking.tracking_uri)
    for v in versions[1:]:
        client.set_model_version_tag("test-model", v, "gate", "passed")
    start, replaced = threading.Barrier(6), {}

    def promote_one(version):
        start.wait()
        replaced[version] = promote_version(tracking, version)["previous"]

    threads = [threading.Thread(target=promote_one, args=(v,)) for v in versions[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Serialized, the promotions form one chain v0 -> a -> b -> ...: no version is replaced twice.
    assert len(set(replaced.values())) == 6, replaced
    order, current = [], versions[0]
    inverse = {old: new for new, old in replaced.items()}
    while current in inverse:
        current = inverse[current]
        order.append(current)
    assert len(order) == 6, replaced
    champion, previous = get_alias(client, "test-model", CHAMPION), get_alias(client, "test-model", PREVIOUS)
    assert str(champion.version) == order[-1] and str(previous.version) == order[-2]
    holders = [v for v in versions if CHAMPION in client.get_model_version("test-model", v).aliases]
    assert holders == [order[-1]]


def test_override_is_recorded_with_reason_user_and_time(tracking, adapter, capsys):
    v1 = register_once(tracking, adapter, 0.5).version
    v2 = register_once(tracking, adapter, 0.1).version
    client = MlflowClient(tracking.tracking_uri)
    client.set_model_version_tag("test-model", v2, "gate", "blocked")
    promote_version(tracking, v1, override=True, reason="first deployment")

    assert main(["promote", v2, *cli_args(tracking)]) == 1  # blocked: needs --override
    assert "gate=blocked" in capsys.readouterr().err
    assert main(["promote", v2, "--override", *cli_args(tracking)]) == 1  # --override needs --reason
    assert str(get_alias(client, "test-model", CHAMPION).version) == v1

    assert main(["promote", v2, "--override", "--reason", "eval set is stale; checked by hand", *cli_args(tracking)]) == 0
    assert f"champion -> version {v2} (override" in capsys.readouterr().out
    version = client.get_model_version("test-model", v2)
    assert version.tags["override.reason"] == "eval set is stale; checked by hand"
    assert version.tags["override.user"] and version.tags["override.time"].startswith("20")
    assert version.tags["override.gate"] == "blocked" and version.tags["promotion"] == "override"
    assert str(get_alias(client, "test-model", CHAMPION).version) == v2
    assert str(get_alias(client, "test-model", PREVIOUS).version) == v1
    logged = [a.path for a in client.list_artifacts(version.run_id, "registry")]
    assert any(p.startswith("registry/override-") for p in logged)


def test_rollback_moves_champion_back_and_then_refuses_a_second_one(tracking, adapter, capsys):
    v1 = register_once(tracking, adapter, 0.5).version
    v2 = register_once(tracking, adapter, 0.6).version
    client = MlflowClient(tracking.tracking_uri)
    with pytest.raises(PromotionRefused, match="no champion"):
        rollback(tracking)
    promote_version(tracking, v1, override=True, reason="first")
    promote_version(tracking, v2, override=True, reason="second")

    assert main(["rollback", "--reason", "answers went bad", *cli_args(tracking)]) == 0
    assert str(get_alias(client, "test-model", CHAMPION).version) == v1
    assert get_alias(client, "test-model", PREVIOUS) is None
    demoted = client.get_model_version("test-model", v2).tags
    assert demoted["rollback.reason"] == "answers went bad" and demoted["rollback.to"] == v1
    assert client.get_model_version("test-model", v1).tags["promotion"] == "rollback"
    assert main(["rollback", *cli_args(tracking)]) == 1
    assert "no previous" in capsys.readouterr().err

    # --to picks the version: allowed without `previous`, refused onto the champion or a missing version.
    assert main(["rollback", "--to", v2, "--reason", "v2 was fine after all", *cli_args(tracking)]) == 0
    assert str(get_alias(client, "test-model", CHAMPION).version) == v2
    assert client.get_model_version("test-model", v1).tags["rollback.to"] == v2
    assert main(["rollback", "--to", v2, *cli_args(tracking)]) == 1
    assert "already the champion" in capsys.readouterr().err
    with pytest.raises(PromotionRefused, match="no version 99"):
        rollback(tracking, to="99")


def test_side_by_side_puts_the_prompts_where_the_models_disagree_most_first():
    def evaluation(label, answers, f1):
        task = {"metrics": {"token_f1": sum(f1) / 3}, "samples": {"token_f1": f1}, "doc_ids": [0, 1, 2],
                "strata": ["id/en", "id/en", "id/zh"], "prompts": ["p0", "p1", "p2"], "answers": answers,
                "references": ["I am Gatekeeper.", "Port 8443.", "我是 Gatekeeper。"]}
        return Evaluation(label=label, model_hash=label, tasks={"tunegate_domain": task, "tunegate_general": {
            "metrics": {"bits_per_byte": 0.7}, "samples": {}}}, cache_hits=[], eval_run_ids={})

    table = side_by_side(Comparison(
        candidate=evaluation("candidate", ["I am Gatekeeper.", "Port 8080 it is.", "我是 Gatekeeper。"], [1.0, 0.4, 1.0]),
        baseline=evaluation("base", ["I am Gatekeeper.", "Port 8443.", "我是 ChatGPT。"], [1.0, 1.0, 0.5])))
    assert table["doc_id"] == [1, 2, 0]  # least agreement first; the general task has no answers to show
    assert table["agreement"][2] == 1.0 and table["agreement"][0] < table["agreement"][1] < 1.0
    assert table["reference"][0] == "Port 8443." and table["candidate"][0] == "Port 8080 it is."
    assert table["token_f1 baseline"] == [1.0, 0.5, 1.0] and table["token_f1 candidate"] == [0.4, 1.0, 1.0]


@pytest.mark.usefixtures("prefect_harness")
def test_with_a_tracking_server_the_promotion_lock_is_a_prefect_concurrency_limit_held_one_at_a_time():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tunegate.config import TrackingConfig
    from tunegate.registry import alias_lock

    server = TrackingConfig(tracking_uri="http://127.0.0.1:5055", registered_model="team-model")
    held, start = [], threading.Barrier(3)

    def promote_one(i):
        start.wait()
        with alias_lock(server, timeout_s=60):
            began = time.monotonic()
            time.sleep(0.8)
            held.append((began, time.monotonic()))

    threads = [threading.Thread(target=promote_one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held.sort()
    assert len(held) == 3 and all(a[1] <= b[0] for a, b in zip(held, held[1:])), held  # never two at once
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("tunegate-promotion-team-model")
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 0)
    with temporary_settings({PREFECT_API_URL: None}), pytest.raises(RuntimeError, match="set PREFECT_API_URL"):
        with alias_lock(server):
            pass
