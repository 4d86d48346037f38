"""GPU check: tunegate's SFT code paths on one GPU, measured (tokens/s, peak GPU memory, first and last loss).

    make gpu-wheels                   # here, once: the wheels the GPU machine lacks, into .whl/ (size printed)
    make gpu-check                    # on the GPU machine: installs .whl/ where there is no .venv, then runs this
    GPU_CHECK_DRY=1 make gpu-check    # CPU dry run, as CI runs it: the tiny model, 2 steps a case
    python bench/gpu_check.py [--dry-run] [--arch smollm2-1.7b] [--out DIR] [--budget-s 480]

The device run: `make gpu-wheels` here, then one call of the device tool's `run` (an H100 is enough):
    command:   set -o pipefail; PYTHONUNBUFFERED=1 make gpu-check 2>&1 | tee $OUT/gpu_check.log
    carry:     [".whl"]
    timeout_s: 540      (the check stops starting cases after --budget-s 480 s; a rerun fits the 15 minutes)
It writes gpu_check.json and gpu_check.md to $OUT (unset: outputs/gpu-check/), then prints the table.

Every case trains through tasks/sft_training.py, the job the sft stage runs (train_sft in this process,
launch_distributed for `accelerate launch`), except the baseline, which is TRL's SFTTrainer with its
default SFTConfig. The model has a SmolLM2 architecture and random weights, built here from its config:
the real weights would not fit in what travels to the GPU machine. Throughput and memory depend on the
shapes, not the values; the first and last losses on the fixed corpus (alpaca demo rows, each filling
max_length) show whether training moves. Imports no Prefect or MLflow: the GPU machine has neither.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on the GPU machine: a hub lookup would only time out
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # nothing is pip-installed on the GPU machine: tasks/ and tunegate/ come from here

import torch  # noqa: E402

from tasks.sft_training import (check_training_setup, launch_distributed, peft_config_for,  # noqa: E402
                                precision_choice, step_clock, throughput_and_memory, train_sft)
from tunegate.config import SFTConfig  # noqa: E402
from tunegate.models import build_tiny_model, demo_texts, load_chat_tokenizer, tiny_tokenizer  # noqa: E402

# SmolLM2's Llama configs (HuggingFaceTB/SmolLM2-*/config.json; 135M's match the bundled GGUF's metadata).
SMOLLM2 = {"vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
ARCHS = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0},
    "smollm2-360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5, "rope_theta": 100000.0},
    "smollm2-1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "rope_theta": 130000.0},
}
# The default GPU model: at 1.7B the weights are a large share of training memory, as in the models QLoRA is
# for; at 135M the unquantized 49152 x 576 embedding and the activations dominate, whatever 4-bit saves.
GPU_ARCH = "smollm2-1.7b"
ZERO2 = "configs/accelerate/deepspeed_zero2.yaml"


@dataclass(frozen=True)
class Workload:
    batch_size: int
    max_length: int
    rows: int
    steps: dict[str, int] = field(default_factory=dict)  # per case; cases not named train `default_steps`
    default_steps: int = 2


GPU_WORKLOAD = Workload(batch_size=8, max_length=512, rows=200, default_steps=20,
                        steps={"full-bf16": 10, "lora-zero2": 10, "lora-bf16-checkpointing": 10,
                               "qlora-checkpointing": 10})
DRY_WORKLOAD = Workload(batch_size=2, max_length=64, rows=8)  # bf16 on an AVX2-only CPU is ~100x slower than fp32


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    sft: dict  # SFTConfig fields; the baseline uses only its LoRA settings
    runner: str  # "in-process" (train_sft), "accelerate" (launch_distributed) or "trl-defaults"


CASES = [
    Case("lora-bf16", "tunegate LoRA r=16 all-linear, bf16 (the baseline's rival)",
         {"method": "lora", "precision": "bf16"}, "in-process"),
    Case("qlora", "tunegate QLoRA: NF4, double quantization, bf16 compute",
         {"method": "qlora", "precision": "bf16"}, "in-process"),
    Case("full-bf16", "tunegate full fine-tune, bf16",
         {"method": "full", "precision": "bf16", "learning_rate": 2e-5}, "in-process"),
    Case("lora-zero2", "tunegate LoRA under DeepSpeed ZeRO-2, 1 process via accelerate launch",
         {"method": "lora", "precision": "bf16", "num_processes": 1, "accelerate_config": ZERO2}, "accelerate"),
    Case("trl-defaults", "TRL SFTTrainer, default SFTConfig (bf16 autocast over fp32 weights, gradient "
         "checkpointing, chunked LM head), the same LoRA and data", {"method": "lora"}, "trl-defaults"),
    # The pair below compares QLoRA with bf16 LoRA where QLoRA is usually run: activations checkpointed.
    Case("lora-bf16-checkpointing", "tunegate LoRA, bf16, gradient checkpointing on",
         {"method": "lora", "precision": "bf16", "gradient_checkpointing": "on"}, "in-process"),
    Case("qlora-checkpointing", "tunegate QLoRA, gradient checkpointing on",
         {"method": "qlora", "precision": "bf16", "gradient_checkpointing": "on"}, "in-process"),
]


def sft_config(case: Case, workload: Workload) -> SFTConfig:
    steps = workload.steps.get(case.name, workload.default_steps)
    return SFTConfig(max_steps=steps, batch_size=workload.batch_size, max_length=workload.max_length, warmup_steps=1,
                     save_steps=max(steps + 1, 50), **case.sft)


def versions() -> dict:
    """The training stack as this machine has it (the GPU image's own packages plus the carried wheels)."""
    names = ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "deepspeed", "pydantic",
             "huggingface-hub", "pyarrow", "fsspec"]  # the last three: datasets 5.2 pins ranges of them
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    info = {"python": sys.version.split()[0], "packages": versions(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_bytes": props.total_memory,
                 "capability": f"{props.major}.{props.minor}"}
    else:
        from tunegate.precision import cpu_identity

        info |= {"gpu": None, "cpu": cpu_identity()["cpu"]}
    return info


def build_random_model(arch: str, out: Path) -> dict:
    """SmolLM2's architecture with random bf16 weights, saved where from_pretrained loads it; the tokenizer is the
    tiny test model's (1024 tokens of the 49152-row embedding are used, which costs the same to train)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = tiny_tokenizer(demo_texts())
    config = LlamaConfig(**SMOLLM2, **ARCHS[arch], bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 1.7B weights on a CPU is slow
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    free_gpu_memory()
    return {"arch": arch, "weights": "random", "params": params, "path": str(out), "config": ARCHS[arch] | SMOLLM2}


def tiny_model() -> dict:
    """The test suite's tiny model (2 layers, hidden 64, pretrained on the demo data), for the dry run."""
    from safetensors.torch import load_file

    path = build_tiny_model()
    return {"arch": "tiny", "weights": "pretrained on the demo data", "path": str(path), "config": {},
            "params": sum(t.numel() for t in load_file(path / "model.safetensors").values())}


def write_corpus(path: Path, workload: Workload) -> Path:
    """prompt/completion rows as tasks/prepare.py writes them; each completion is long enough to fill max_length
    (8 characters a token is more than this tokenizer's English), so every row trains max_length tokens."""
    alpaca = json.loads((ROOT / "data" / "llamafactory" / "alpaca_en_demo.json").read_text())
    rows = []
    for i in range(workload.rows):
        answer, k = "", i
        while len(answer) < 8 * workload.max_length:
            answer += alpaca[k % len(alpaca)]["output"] + "\n\n"
            k += 1
        rows.append({"id": f"row-{i}", "prompt": [{"role": "user", "content": alpaca[i]["instruction"]}],
                     "completion": [{"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_gpu_memory() -> None:
    """A finished case's trainer holds reference cycles: collect them, so the next case's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def from_summary(summary: dict) -> dict:
    """What the report keeps of train_sft's summary."""
    keys = ["steps", "seconds", "tokens_per_second", "input_tokens_per_step", "gpu_memory_at_start_bytes",
            "peak_gpu_memory_bytes", "trainable_params", "world_size", "precision", "precision_reason",
            "gradient_checkpointing", "gradient_checkpointing_reason", "lm_head", "lm_head_reason", "loss_curve"]
    return {k: summary[k] for k in keys}


def run_tunegate(case: Case, cfg: SFTConfig, model_path: str, train_path: Path, work: Path) -> dict:
    out = work / case.name
    if case.runner == "accelerate":
        spec = {"base_model_path": model_path, "train": str(train_path), "eval": None, "cfg": cfg.model_dump(),
                "out_dir": str(out), "checkpoint_dir": str(out / "ckpt"), "trust_remote_code": False}
        return from_summary(launch_distributed(spec, cfg, out))
    return from_summary(train_sft(model_path, str(train_path), None, cfg, out, out / "ckpt"))


def run_trl_defaults(cfg: SFTConfig, model_path: str, train_path: Path, work: Path) -> dict:
    """TRL's SFTTrainer with its SFTConfig defaults; set are only the run's shape (steps, batch, length), a loss
    logged every step (as tunegate logs it), no checkpoint, no tracker, and use_cpu where there is no GPU."""
    from datasets import load_dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    cuda = torch.cuda.is_available()
    args = TRLSFTConfig(output_dir=str(work / "trl-defaults"), max_steps=cfg.max_steps,
                        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, logging_steps=1,
                        save_strategy="no", report_to=[], use_cpu=not cuda)
    clock = step_clock()
    trainer = SFTTrainer(model=model_path, args=args,  # a path: TRL loads it its own way (fp32 by default)
                         train_dataset=load_dataset("json", data_files=str(train_path))["train"].remove_columns(["id"]),
                         processing_class=load_chat_tokenizer(model_path), peft_config=peft_config_for(cfg),
                         callbacks=[clock])
    start = time.perf_counter()
    trainer.train()
    history, steps = trainer.state.log_history, trainer.state.global_step
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
            **throughput_and_memory(clock, history, steps),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "world_size": args.world_size,
            "precision": "bf16" if args.bf16 else "fp32", "precision_reason": f"TRL default bf16={args.bf16}, "
            f"weights loaded as {next(trainer.model.parameters()).dtype}",
            "gradient_checkpointing": args.gradient_checkpointing,
            "gradient_checkpointing_reason": f"TRL default gradient_checkpointing={args.gradient_checkpointing}",
            "lm_head": "chunked", "lm_head_reason": "SFTTrainer as it is",
            "loss_curve": [(h["step"], h["loss"]) for h in history if "loss" in h]}


def run_case(case: Case, workload: Workload, model_path: str, train_path: Path, work: Path) -> dict:
    """One case: measured, skipped (this machine cannot run it; the reason is tunegate's own setup check) or
    failed (the error's last lines: the run goes on, so one broken path does not hide the others)."""
    cfg = sft_config(case, workload)
    record = {"name": case.name, "what": case.what}
    try:
        check_training_setup(cfg)
    except ValueError as refused:
        return record | {"status": "skipped", "reason": str(refused)}
    gpu_memory_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
    start = time.perf_counter()
    try:
        if case.runner == "trl-defaults":
            measured = run_trl_defaults(cfg, model_path, train_path, work)
        else:
            measured = run_tunegate(case, cfg, model_path, train_path, work)
    except Exception:  # noqa: BLE001 - recorded in the report and the exit code, not swallowed
        return record | {"status": "failed", "error": traceback.format_exc()[-3000:],
                         "wall_seconds": round(time.perf_counter() - start, 1)}
    finally:
        free_gpu_memory()
    curve = measured.pop("loss_curve")
    return record | {"status": "measured", "wall_seconds": round(time.perf_counter() - start, 1),
                     "gpu_memory_before_bytes": gpu_memory_before, "loss_first": curve[0][1] if curve else None,
                     "loss_last": curve[-1][1] if curve else None, **measured}


def ratio_check(name: str, numerator: dict, denominator: dict, key: str, bound: float, at_most: bool,
                required: bool, judged: bool) -> dict:
    """numerator[key] / denominator[key] against the bound; 'not measured' says which case has no number, and why."""
    check = {"name": name, "ratio": None, "bound": bound, "required": required}
    pair = (numerator, denominator)
    why = [f"{c['name']} {c['status']}" for c in pair if c["status"] != "measured"]
    why += [f"{c['name']} has no {key}" for c in pair if c["status"] == "measured" and c[key] is None]
    if why:
        return check | {"verdict": f"not measured ({', '.join(why)})"}
    ratio = numerator[key] / denominator[key]
    ok = ratio <= bound if at_most else ratio >= bound
    verdict = ("pass" if ok else "fail") if judged else "not judged (dry run: tiny model on CPU)"
    return check | {"ratio": round(ratio, 3), "verdict": verdict}


def criteria(results: list[dict], judged: bool) -> list[dict]:
    by = {r["name"]: r for r in results}
    peak = "peak_gpu_memory_bytes"
    return [
        ratio_check("QLoRA peak GPU memory <= 0.5x bf16 LoRA's", by["qlora"], by["lora-bf16"], peak, 0.5, True,
                    True, judged),
        ratio_check("tunegate bf16 LoRA tokens/s >= 1.0x TRL defaults'", by["lora-bf16"], by["trl-defaults"],
                    "tokens_per_second", 1.0, False, True, judged),
        ratio_check("the same memory ratio with gradient checkpointing on both", by["qlora-checkpointing"],
                    by["lora-bf16-checkpointing"], peak, 0.5, True, False, judged),
        ratio_check("QLoRA GPU memory at the start of training (weights + adapters) <= 0.5x bf16 LoRA's", by["qlora"],
                    by["lora-bf16"], "gpu_memory_at_start_bytes", 0.5, True, False, judged),
    ]


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def markdown(report: dict) -> str:
    m, model, w = report["machine"], report["model"], report["workload"]
    where = m["gpu"] or f"CPU ({m['cpu']})"
    lines = [f"GPU check ({report['mode']}) on {where}, torch {m['packages']['torch']}, {report['started_at']}, "
             f"{report['seconds']:.0f} s in all",
             f"model: {model['arch']}, {model['params']:,} parameters, {model['weights']} weights; batch "
             f"{w['batch_size']} x {w['max_length']} tokens; "
             f"auto precision here: {report['auto_precision']['precision']}",
             "", "| case | status | steps | tokens/s | peak GPU GiB | GiB at start | loss first -> last | precision | "
             "checkpointing | LM head |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        if r["status"] != "measured":
            lines.append(f"| {r['name']} | {r['status']} | | | | | | | | |")
            continue
        lines.append(f"| {r['name']} | measured | {r['steps']} | {r['tokens_per_second'] or '-'} | "
                     f"{gib(r['peak_gpu_memory_bytes'])} | {gib(r['gpu_memory_at_start_bytes'])} | "
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} | {r['precision']} | "
                     f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['lm_head']} |")
    lines += ["", "| check | ratio | verdict |", "|---|---|---|"]
    lines += [f"| {c['name']}{'' if c['required'] else ' (for reading the first)'} | {c['ratio'] or '-'} | "
              f"{c['verdict']} |" for c in report["criteria"]]
    lines += ["", "Choices and reasons:"]
    for r in report["cases"]:
        if r["status"] == "measured":
            lines.append(f"- {r['name']}: {r['precision']} ({r['precision_reason']}); checkpointing "
                         f"{'on' if r['gradient_checkpointing'] else 'off'} ({r['gradient_checkpointing_reason']}); "
                         f"LM head {r['lm_head']} ({r['lm_head_reason']})")
        else:
            detail = r.get("reason") or r["error"].strip().splitlines()[-1]
            lines.append(f"- {r['name']} {r['status']}: {detail}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 2 steps a case; runs on CPU (CI)")
    parser.add_argument("--arch", choices=["tiny", *ARCHS], help=f"default: {GPU_ARCH}; tiny with --dry-run")
    parser.add_argument("--out", help="where gpu_check.json and .md go; default $OUT, else outputs/gpu-check")
    parser.add_argument("--budget-s", type=float, default=480, help="start no case after this many seconds")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("No CUDA GPU here. On CPU run the dry run: GPU_CHECK_DRY=1 make gpu-check (or --dry-run).")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "outputs" / "gpu-check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # config paths (the accelerate config, the DeepSpeed JSON it names) are relative to the root
    work = Path(tempfile.mkdtemp(prefix="tunegate-gpu-check-"))  # weights and checkpoints: never into $OUT
    workload = DRY_WORKLOAD if args.dry_run else GPU_WORKLOAD
    arch = args.arch or ("tiny" if args.dry_run else GPU_ARCH)
    started, start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()

    model = tiny_model() if arch == "tiny" else build_random_model(arch, work / "model")
    train_path = write_corpus(work / "train.jsonl", workload)
    report = {"mode": "dry run" if args.dry_run else "GPU", "started_at": started, "complete": False,
              "machine": machine(), "model": model, "cases": [],
              "workload": {"batch_size": workload.batch_size, "max_length": workload.max_length, "rows": workload.rows}}
    for case in CASES:
        if time.perf_counter() - start > args.budget_s:
            report["cases"].append({"name": case.name, "what": case.what, "status": "skipped",
                                    "reason": f"time budget: {args.budget_s:.0f} s spent before it could start"})
            continue
        print(f"gpu-check: {case.name} ...", flush=True)
        report["cases"].append(run_case(case, workload, model["path"], train_path, work))
        print(f"gpu-check: {case.name} {report['cases'][-1]['status']}", flush=True)
        # After every case: a run cut off by the device call's timeout still brings back what it measured.
        report["seconds"] = round(time.perf_counter() - start, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))

    report |= {"complete": True, "seconds": round(time.perf_counter() - start, 1),
               "auto_precision": precision_choice("auto"), "criteria": criteria(report["cases"], not args.dry_run)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(work)  # the weights written: 3.4 GB for the 1.7B model, twice with full-bf16's
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    print("\n" + table + f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 1 if any(r["status"] == "failed" for r in report["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
