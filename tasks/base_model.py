"""Stage 0, base model: which model this run builds on, resolved once to local files.

    python -m tasks.base_model bundled:smollm2-135m-instruct   # print the resolved model

Every later stage (data checks, training, eval, export) reads this one decision.
"""

from __future__ import annotations

import sys

from prefect import task

from tunegate.config import ModelRef
from tunegate.models import ResolvedModel, resolve_model


@task(retries=2, retry_delay_seconds=[2, 5])
def base_model(model: ModelRef) -> ResolvedModel:
    """Resolve the config's base model (bundled, tiny, hub id or path) to files from_pretrained loads."""
    return resolve_model(model)


if __name__ == "__main__":
    print(resolve_model(ModelRef(base_model=sys.argv[1])).model_dump_json(indent=2))
