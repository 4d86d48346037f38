"""Stage 5, dpo: TRL DPOTrainer on preference pairs, starting from the SFT model.

    python -m tasks.dpo BASE_DIR SFT_ADAPTER_DIR PAIRS_JSONL OUT_DIR    # a short run, default config

The reference model is the SFT model. With an adapter, TRL keeps a frozen copy of the SFT adapter
("ref") next to the trainable one, so the reference costs a few MB, not a second copy of the
base weights; the base stays shared. (Disabling the adapter instead would make the *base* model
the reference, which pulls the policy back past SFT.) Full fine-tunes get a reference copy.
Skipped, with a log line, when there are no pairs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from tasks.prepare import Prepared
from tasks.sft import Trained
from tunegate.caching import content_key, file_sha256
from tunegate.config import DPOConfig

log = logging.getLogger(__name__)


def read_pairs(path: Path, max_pairs: int | None) -> list[dict]:
    """Canonical preference records -> TRL conversational preference rows."""
    rows = []
    with path.open() as f:
        for line in f:
            if max_pairs is not None and len(rows) >= max_pairs:
                break
            rec = json.loads(line)
            rows.append({"prompt": rec["prompt"], "chosen": [rec["chosen"]], "rejected": [rec["rejected"]]})
    return rows


def train_dpo(
    base_model_path: str,
    sft: dict,
    pairs_path: str,
    cfg: DPOConfig,
    precision: str,
    out_dir: Path,
    trust_remote_code: bool = False,
) -> dict:
    """Continue from the SFT weights with DPO; return the new weights' path and the reward curves."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig, DPOTrainer

    from tunegate.models import load_chat_tokenizer

    pairs = read_pairs(Path(pairs_path), cfg.max_pairs)
    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if sft["adapter"]:
        base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, sft["adapter"], is_trainable=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(sft["model"], dtype=dtype, trust_remote_code=trust_remote_code)

    args = TRLDPOConfig(
        output_dir=str(out_dir / "checkpoints"),
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    reference = "frozen copy of the SFT adapter" if sft["adapter"] else "copy of the SFT model"
    log.info("DPO on %d pairs, beta %s, loss %s; reference: %s", len(pairs), cfg.beta, cfg.loss_type, reference)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start

    weights_dir = out_dir / ("adapter" if sft["adapter"] else "model")
    if sft["adapter"]:
        trainer.model.save_pretrained(weights_dir, selected_adapters=["default"])  # not the frozen "ref" copy
        tokenizer.save_pretrained(weights_dir)
    else:
        trainer.save_model(str(weights_dir))
        (weights_dir / "training_args.bin").unlink(missing_ok=True)
    history = trainer.state.log_history

    def curve(key: str) -> list:
        return [(h["step"], h[key]) for h in history if key in h]

    summary = {
        "skipped": False,
        "pairs": len(pairs),
        "adapter": str(weights_dir) if sft["adapter"] else None,
        "model": None if sft["adapter"] else str(weights_dir),
        "reference": reference,
        "train_loss": float(result.training_loss),
        "loss_curve": curve("loss"),
        "margin_curve": curve("rewards/margins"),
        "accuracy_curve": curve("rewards/accuracies"),
        "steps": int(trainer.state.global_step),
        "seconds": round(seconds, 1),
        "seed": cfg.seed,
    }
    (out_dir / "dpo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class Aligned(BaseModel):
    """The candidate's weights after DPO (the SFT weights when DPO was skipped), the SFT run they came from."""

    model_config = ConfigDict(extra="forbid")
    skipped: bool
    skip_reason: str | None = None
    adapter: str | None
    model: str | None
    sft: Trained
    pairs: int = 0
    reference: str | None = None
    train_loss: float | None = None
    loss_curve: list[tuple[int, float]] = []
    margin_curve: list[tuple[int, float]] = []
    accuracy_curve: list[tuple[int, float]] = []
    steps: int = 0
    seconds: float = 0.0
    seed: int | None = None
    rl: dict | None = None  # tasks/rl.py's summary when RL replaced these weights with its own

    @property
    def weights(self) -> str:
        return self.adapter or self.model


def _dpo_cache_key(context, parameters) -> str:
    trained, cfg = parameters["trained"], parameters["cfg"]
    pairs = parameters["prepared"].validated.clean_preferences
    weights = Path(trained.adapter or trained.model)
    weights_hashes = [file_sha256(p) for p in sorted(weights.glob("*.safetensors"))]  # streamed: a full model is GBs
    output_root = Path(parameters["out_dir"]).parent.parent  # <output_dir>/<run>/dpo
    return content_key(output_root, file_sha256(pairs), trained.base.path, *weights_hashes, cfg.model_dump_json(),
                       trained.precision)


@task(cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_dpo_cache_key), persist_result=True)
def dpo(trained: Trained, prepared: Prepared, cfg: DPOConfig, out_dir: str) -> Aligned:
    """Align the SFT model on preference pairs; pass the SFT weights through when there are none."""
    pairs_path = prepared.validated.clean_preferences
    n_pairs = sum(1 for _ in open(pairs_path))
    if not cfg.enabled or n_pairs == 0:
        why = "dpo.enabled is false" if not cfg.enabled else "no preference pairs in the data"
        log.info("DPO skipped: %s", why)
        return Aligned(skipped=True, skip_reason=why, adapter=trained.adapter, model=trained.model, sft=trained)
    summary = train_dpo(trained.base.path, trained.model_dump(), pairs_path, cfg, trained.precision, Path(out_dir),
                        trained.base.trust_remote_code)
    return Aligned(**summary, sft=trained)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    summary = train_dpo(sys.argv[1], {"adapter": sys.argv[2], "model": None}, sys.argv[3], DPOConfig(max_pairs=16),
                        "fp32", Path(sys.argv[4]))
    print(json.dumps({k: v for k, v in summary.items() if "curve" not in k}, indent=2))
