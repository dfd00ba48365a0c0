"""The compute cores run on a bare GPU machine: no Ray, MLflow, SQLAlchemy, FastAPI or pydantic.

A subprocess hides those packages as if they were not installed, imports the forward and
training paths and runs ``benchmarks.gpu`` end to end at a tiny size (a forward pass through
``TicketClassifier`` and one LoRA training step).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks import gpu
from pipelines.config import ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[3]
MARKER = "BARE-COMPUTE-OK"

# The path finder is wrapped rather than a finder put in front that raises: probes such as
# importlib.util.find_spec("mlflow") (accelerate runs them on import) must answer None, as they
# do where the package is absent, while `import mlflow` raises ModuleNotFoundError.
BARE = textwrap.dedent(
    f"""
    import importlib.machinery
    import sys

    BLOCKED = ("ray", "mlflow", "sqlalchemy", "fastapi", "pydantic")


    class NotInstalled:
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                return None
            return self.inner.find_spec(name, path, target)

        def __getattr__(self, attribute):
            return getattr(self.inner, attribute)


    sys.meta_path[:] = [
        NotInstalled(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path
    ]
    for name in BLOCKED:
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"{{name}} is still importable")

    import pipelines.model.base
    import pipelines.model.classifier
    import pipelines.model.artifact
    import pipelines.model.batching
    import pipelines.model.steps
    import pipelines.model.inference
    import pipelines.predict
    import benchmarks.gpu

    benchmarks.gpu.main([
        "--reduced", "--device", "cpu", "--no-record", "--lengths", "16", "--concurrency", "2",
        "--bulk-tokens", "64", "--reps", "1", "--latency-reps", "2", "--train-batch", "2",
        "--train-length", "16", "--train-steps", "1", "--train-warmup", "0",
        "--peak-size", "64", "--peak-reps", "1", "--bandwidth-mib", "1",
    ])
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("{MARKER}")
    """
)


def test_forward_and_training_step_run_without_ray_mlflow_or_pydantic() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BARE], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert MARKER in done.stdout
    assert "CPU verification at a reduced shape" in done.stdout
    assert "LoRA training" in done.stdout


def test_bare_stand_ins_carry_the_product_defaults() -> None:
    """benchmarks.gpu uses these where pydantic is missing; they must match pipelines.config."""
    model, train = ModelConfig(), TrainConfig()
    assert model.finetune == gpu.BareModelConfig().finetune
    lora = gpu.BareLora()
    assert (lora.r, lora.alpha, lora.dropout) == (model.lora.r, model.lora.alpha, model.lora.dropout)
    assert list(lora.target_modules) == list(model.lora.target_modules)
    for name in (f.name for f in dataclasses.fields(gpu.BareTrainConfig)):
        assert getattr(gpu.BareTrainConfig(), name) == getattr(train, name), name
