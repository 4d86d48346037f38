"""tunegate: a gated fine-tuning pipeline for open LLMs (Prefect + TRL + lm-eval + MLflow)."""

__version__ = "0.1.0"
