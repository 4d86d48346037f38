"""The merged export is a plain transformers model that behaves like base + adapter."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tasks.export import export_model
from tasks.sft_training import train_sft
from tunegate.config import SFTConfig


def test_merged_export_loads_in_a_plain_pipeline_and_matches_the_adapter(prepared, tmp_path):
    from peft import PeftModel

    cfg = SFTConfig(max_steps=3, batch_size=8, learning_rate=5e-3, warmup_steps=1, lora_r=4, save_steps=100)
    trained = train_sft(prepared["base_model_path"], prepared["train"], None, cfg, tmp_path / "sft", tmp_path / "ck")
    out = export_model(prepared["base_model_path"], trained, tmp_path / "export", "tiny-test", 512)

    generate = pipeline("text-generation", model=out["merged"], device="cpu")
    text = generate("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", max_new_tokens=8, do_sample=False)
    assert len(text[0]["generated_text"]) > len("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    ids = AutoTokenizer.from_pretrained(out["merged"])("Give three tips for staying healthy.", return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(out["merged"])
    base = AutoModelForCausalLM.from_pretrained(prepared["base_model_path"])
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, out["adapter"])(**ids).logits
        got = merged(**ids).logits
        plain = AutoModelForCausalLM.from_pretrained(prepared["base_model_path"])(**ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really is in there

    assert not list((tmp_path / "export").rglob("*.bin"))
    assert out["serve_command"].startswith("vllm serve ") and "--served-model-name tiny-test" in out["serve_command"]
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM {out['merged']}") and 'PARAMETER stop "<|im_end|>"' in modelfile
