"""Serve the fine-tuning flow as a deployment from this machine, without a worker or work pool.

    python deployments/serve.py     # needs a Prefect API (e.g. `prefect server start`)

Runs are then started from the Prefect UI, whose form is drawn from PipelineParams; the form
starts filled with configs/demo.yaml.
"""

from flows.finetune import finetune_pipeline
from tunegate.config import load_config

if __name__ == "__main__":
    finetune_pipeline.serve(name="finetune", parameters={"params": load_config("configs/demo.yaml").model_dump()})
