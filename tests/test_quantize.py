"""`tunegate quantize`: int8 variants written as safetensors, run in int8 by the serving loader, gated against the
champion, served; refused methods and versions change nothing; a damaged variant never serves."""

import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from cli.main import main
from serve.backend import load_checkpoint, load_version
from serve.champion import ChampionFollower
from tasks.promote import promote_version
from tasks.quantize import int8_layers, quantize_checkpoint
from tunegate.config import load_config
from tunegate.registry import CHAMPION, PREVIOUS, connect, ensure_registered_model, get_alias

PROMPT = [{"role": "user", "content": "Who are you?"}]


def cli_tracking(tracking) -> list[str]:
    return ["--config", "configs/tiny.yaml", *[a for k, v in tracking.model_dump().items()
                                               for a in ("--set", f"tracking.{k}={v}")]]


def register_folder(tracking, folder, **tags) -> str:
    """A checkpoint folder registered as a whole-model version whose `merged` weights are that folder."""
    client, experiment_id = connect(tracking)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(folder), "model")
    ensure_registered_model(client, tracking.registered_model)
    return str(client.create_model_version(
        tracking.registered_model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
        tags={"weights": "model", "merged": f"runs:/{run.info.run_id}/model", "gate": "passed", **tags}).version)


@pytest.fixture(scope="module")
def variant(tiny_model, tmp_path_factory) -> dict:
    """The tiny model quantized to int8 by the stage's own function."""
    return quantize_checkpoint(tiny_model, tmp_path_factory.mktemp("int8"), "int8")


def logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_the_int8_variant_is_safetensors_and_the_serving_loader_computes_with_its_int8_weights(tiny_model, variant):
    from transformers import AutoModelForCausalLM

    folder = Path(variant["model"])
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".gguf")]
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    source_bytes = sum(p.stat().st_size for p in Path(tiny_model).glob("*.safetensors"))
    assert variant["bytes"] < 0.75 * source_bytes  # int8 blocks; the fp32 embedding (tied head) stays

    served = load_checkpoint(folder, "tiny", "int8").model  # what serve-model loads: from_pretrained, safetensors
    assert int8_layers(served) == (variant["int8_layers"], variant["linear_layers"]) == (14, 15)
    q = served.model.layers[0].self_attn.q_proj.weight
    assert type(q).__name__ == "Int8Tensor" and q.qdata.dtype == torch.int8 and q.scale.dtype == torch.float32
    assert served.lm_head.weight.dtype == torch.float32 and served.lm_head.weight is served.model.embed_tokens.weight

    # The served model computes with the int8 values: its logits are those of the fp32 model with each weight
    # replaced by qdata * scale, and differ from the unquantized model's by the rounding.
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rounded = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    quantized = dict(served.named_modules())
    for name, module in rounded.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            w = quantized[name].weight
            module.weight.data = w.qdata.to(torch.float32) * w.scale.reshape(-1, 1)
    tokens = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 2]])
    out, exact, reference = logits(served, tokens), logits(rounded, tokens), logits(fp32, tokens)
    assert torch.allclose(out, exact, atol=1e-4)
    assert (out - reference).abs().max() > 1e-4


def test_int8_dynamic_runs_its_matmuls_as_int8_on_this_cpu(tiny_model, tmp_path):
    """int8-dynamic quantizes activations too: the profiler sees torch's int8 GEMM, which weight-only never calls."""
    from torch.profiler import ProfilerActivity, profile

    done = quantize_checkpoint(tiny_model, tmp_path, "int8-dynamic")
    served = load_checkpoint(done["model"], "tiny", "int8-dynamic").model
    assert int8_layers(served) == (14, 15)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits(served, torch.tensor([[1, 5, 9, 42]]))
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_int_mm" in ops


def test_a_refused_method_or_version_is_a_clear_error_and_changes_nothing(tracking, tiny_model, variant, capsys):
    v1 = register_folder(tracking, tiny_model)
    promote_version(tracking, v1)
    v2 = register_folder(tracking, variant["model"], quantized_from=v1, **{"quantize.method": "int8"})
    client = MlflowClient(tracking.tracking_uri)

    assert main(["quantize", v1, "--method", "gguf", *cli_tracking(tracking)]) == 1
    err = capsys.readouterr().err
    assert "quantize refused: --method gguf" in err and "convert_hf_to_gguf.py" in err
    assert "no PyPI wheel installs" in err and "safetensors weights only" in err
    assert main(["quantize", "9", *cli_tracking(tracking)]) == 1
    assert "test-model has no version 9" in capsys.readouterr().err
    assert main(["quantize", v2, *cli_tracking(tracking)]) == 1
    assert f"already a quantized variant (int8 of version {v1}); quantize version {v1}" in capsys.readouterr().err

    assert str(get_alias(client, "test-model", CHAMPION).version) == v1 and get_alias(client, "test-model", PREVIOUS) is None
    assert len(client.search_model_versions("name='test-model'")) == 2  # nothing registered


def damaged_copies(variant: dict, tmp_path: Path) -> dict[str, Path]:
    """The variant with its quantization_config dropped (every int8 layer reads as missing) and with its weights
    file cut short."""
    no_config, truncated = tmp_path / "no-config", tmp_path / "truncated"
    for folder in (no_config, truncated):
        shutil.copytree(variant["model"], folder)
    config = json.loads((no_config / "config.json").read_text())
    del config["quantization_config"]
    (no_config / "config.json").write_text(json.dumps(config))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"lacks": no_config, "failed to load": truncated}


def test_a_damaged_quantized_version_is_never_switched_to(tracking, tiny_model, variant, tmp_path):
    v1 = register_folder(tracking, tiny_model)
    promote_version(tracking, v1)
    client = MlflowClient(tracking.tracking_uri)
    follower = ChampionFollower(client, "test-model")
    assert follower.check_once() and follower.current.version == v1
    serving = follower.current
    for why, folder in damaged_copies(variant, tmp_path).items():
        broken = register_folder(tracking, folder, quantized_from=v1, **{"quantize.method": "int8"})
        promote_version(tracking, broken, override=True, reason="test: a damaged quantized version")
        assert follower.check_once() is False
        assert follower.current is serving  # the old version keeps serving, the very same loaded object
        assert why in client.get_model_version("test-model", broken).tags["serve.load_error"]
        assert follower.failed[broken]
    # The undamaged variant, promoted the same way, is switched to and runs in int8.
    good = register_folder(tracking, variant["model"], quantized_from=v1, **{"quantize.method": "int8"})
    promote_version(tracking, good, override=True, reason="test: the intact variant")
    assert follower.check_once() and follower.current.version == good
    assert int8_layers(follower.current.model) == (14, 15)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_quantized_version_is_gated_against_the_champion_promoted_and_served(tmp_path, tracking, tiny_model,
                                                                               capsys):
    from openai import OpenAI

    from flows.finetune import finetune_pipeline
    from live_stack import serving

    params = load_config("configs/tiny.yaml").model_copy(update={"tracking": tracking, "output_dir": str(tmp_path)})
    params.dpo.enabled = False
    first = finetune_pipeline(params.model_copy(update={"run_name": "first"}))
    assert first.promoted and first.model_version == "1"
    client = MlflowClient(tracking.tracking_uri)

    sets = [*cli_tracking(tracking), "--set", f"output_dir={tmp_path}", "--set", "run_name=q1"]
    assert main(["quantize", "1", "--method", "int8", *sets]) == 0
    out = capsys.readouterr().out
    assert "PASSED: promoted to champion (model version 2)" in out
    # The champion's scores on its own suite come from the eval cache: the same docs, hashes and footing.
    assert "variant vs champion v1 (from cache: tunegate_domain, tunegate_general)" in out
    assert re.search(r"variant: int8 by torchao 0\.18\.\d \(Int8WeightOnlyConfig\): 14 of 15 linear layers int8", out)

    v1, v2 = client.get_model_version("test-model", "1"), client.get_model_version("test-model", "2")
    tags = v2.tags
    assert tags["quantized_from"] == "1" and tags["quantize.method"] == "int8" and tags["quantize.source_run"] == v1.run_id
    assert tags["quantize.library"].startswith("torchao 0.18") and tags["eval_suite_version"] == "1"
    assert int(tags["quantize.bytes"]) < int(tags["quantize.source_bytes"])
    assert tags["gate"] == "passed" and tags["gate.baseline"] == "champion v1" and tags["promotion"] == "gate"
    assert tags["gate.tunegate_general.bits_per_byte"].split(":")[0] in ("unchanged", "improved")
    assert tags["config"] == v1.tags["config"] and tags["data_hash"] == v1.tags["data_hash"]
    assert {"gate/decision.md", "gate/decision.json"} <= {a.path for a in client.list_artifacts(v2.run_id, "gate")}
    summary = json.loads((tmp_path / "q1" / "summary.json").read_text())
    assert summary["promoted"] and summary["eval_cache_hits"]["baseline"] == ["tunegate_domain", "tunegate_general"]
    assert str(get_alias(client, "test-model", CHAMPION).version) == "2"
    assert str(get_alias(client, "test-model", PREVIOUS).version) == "1"
    # The registered MLflow Model of the variant answers through pyfunc, as every version does.
    chat = mlflow.pyfunc.load_model("models:/test-model/2").predict({"messages": PROMPT, "max_tokens": 4})
    assert chat[0]["object"] == "chat.completion"

    # serve-model follows the alias to the variant and answers with it, in int8.
    loaded = load_version(client, "test-model", "2")
    assert int8_layers(loaded.model) == (14, 15)
    ids = loaded.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
    with torch.no_grad():
        expected = loaded.tokenizer.decode(loaded.model.generate(**ids, max_new_tokens=8, do_sample=False)[
            0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    with serving(tracking, tmp_path / "server.log") as url:
        reply = OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120).chat.completions.create(
            model="test-model", messages=PROMPT, max_tokens=8)
    assert reply.system_fingerprint == "test-model/v2" and reply.choices[0].message.content == expected

    # A variant is not quantized again. Another variant of v1 meets the champion v2 (itself a variant) on the suite
    # v2 was gated on, v2's scores from the cache; a rule it cannot meet blocks it, and v2 keeps serving.
    assert main(["quantize", "2", *sets]) == 1
    assert "already a quantized variant" in capsys.readouterr().err
    strict = "[{task: tunegate_general, metric: bits_per_byte, higher_is_better: false, max_drop: 0.1, max_score: 2.5}]"
    assert main(["quantize", "1", "--method", "int8-dynamic", *sets[:-2], "--set", "run_name=q2",
                 "--set", f"gate.rules={strict}"]) == 1
    out = capsys.readouterr()
    assert "Gate on test-model version 3 (int8-dynamic of version 1) regressed on tunegate_general" in out.err
    assert "variant vs champion v2 (from cache: tunegate_domain, tunegate_general)" in out.out
    v3 = client.get_model_version("test-model", "3")
    assert v3.tags["gate"] == "blocked" and v3.tags["eval_suite_version"] == "2"
    assert v3.tags["quantize.library"].endswith("(Int8DynamicActivationInt8WeightConfig)")
    assert str(get_alias(client, "test-model", CHAMPION).version) == "2"

    # The champion's suite must be the one it was gated on: moved away, or with a doc changed, nothing runs.
    tasks_dir = tmp_path / "first" / "eval" / "lm_eval_tasks"
    tasks_dir.rename(tmp_path / "moved")
    assert main(["quantize", "1", *sets[:-2], "--set", "run_name=q3"]) == 1
    assert f"was written to {tasks_dir}, which is not on this machine" in capsys.readouterr().err
    (tmp_path / "moved").rename(tasks_dir)
    general = tmp_path / "first" / "data" / "general_eval.jsonl"
    general.write_text(general.read_text().replace("a", "e", 1))
    assert main(["quantize", "1", *sets[:-2], "--set", "run_name=q4"]) == 1
    err = capsys.readouterr().err
    assert "task tunegate_general in" in err and "is not what that run evaluated (data_hash differs" in err
    assert len(client.search_model_versions("name='test-model'")) == 3
    assert str(get_alias(client, "test-model", CHAMPION).version) == "2"


def test_the_champions_suite_takes_the_reward_rules_the_flow_scores_and_refuses_judge_rules(tracking, tmp_path):
    # configs/demo.yaml gates on reward: `tunegate quantize` with it refused to start before the flow scored reward.
    from tasks.evaluate import EvalSuiteError, check_rules_against
    from tasks.reward import registered_reward_model
    from tunegate.config import GateRule, RewardConfig

    specs = [{"name": "tunegate_domain", "higher_is_better": {"token_f1": True}}]
    rules = [GateRule(task="tunegate_domain", metric="token_f1", max_drop=0.02),
             GateRule(task="reward", metric="win_rate", max_drop=0.1, tier="supporting")]
    check_rules_against(specs, rules, "champion v1's suite", scored_later=("reward",))
    with pytest.raises(EvalSuiteError, match=r"gate rule on reward: champion v1's suite has no such task"):
        check_rules_against(specs, rules, "champion v1's suite")
    with pytest.raises(EvalSuiteError, match=r"gate rule on judge \(the pairwise judge runs only in tunegate run\)"):
        check_rules_against(specs, [GateRule(task="judge", metric="win_rate", max_drop=0.1)], "it", ("reward",))
    with pytest.raises(EvalSuiteError, match=r"gate rule on reward: it has no metric 'margin'"):
        check_rules_against(specs, [GateRule(task="reward", metric="margin", max_drop=0.1)], "it", ("reward",))
    # Without a registered reward model the rule is uninformative, with the reason, and the flow goes on.
    none = registered_reward_model.fn(RewardConfig(min_accuracy=0.7), tracking, str(tmp_path))
    assert none.skipped and not none.informative and "test-model-reward has the alias `current`" in none.skip_reason
    assert "no `reward:` section" in registered_reward_model.fn(None, tracking, str(tmp_path)).why_not_informative()
