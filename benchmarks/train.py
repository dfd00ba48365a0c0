"""``train``: Ray Train (1 and 2 workers) against the same training in a plain PyTorch loop.

The question (issue #9): what does Ray Train cost on top of the training it runs? Two costs are
told apart on a job long enough to separate them:

- **fixed start-up seconds**: wall seconds of the whole fit minus the seconds inside the step
  loops (starting the worker group, building the model, validation, checkpoints, shutdown);
- **per-step overhead**: seconds per step (per example, with several workers) inside the step
  loops, against the plain loop's.

Every contender trains the product's classifier (``build_classifier``, LoRA) on the same
tokenized rows, with the same batch size, epochs, optimizer, schedule and class weights:

- *plain PyTorch*: a loop in this process over the rows (shuffled, ``batching.pad_batch``,
  ``training_step``, ``optimizer_step``), a validation pass and a saved state per epoch, with
  as many torch threads as a Ray Train worker gets;
- *Ray Train, N workers*: the product's ``train_loop`` under the TorchTrainer the product
  builds (``pipelines.training.job.build_loop_config`` / ``build_trainer``), Ray already started.

Contenders alternate (A B C A B C …) so that drift on a shared machine hits them alike; the
table holds medians over rounds. Run by hand::

    python -m benchmarks.train                      # ~17 min, appends to benchmarks/RESULTS.md
    python -m benchmarks.train --days 6 --tickets-per-day 300 --epochs 1 --rounds 1 --no-record
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import Report, alternate, median, publish

log = logging.getLogger("benchmarks.train")

TARGET_FIXED_S = 20.0
TARGET_STEP_OVERHEAD = 0.10
PLAIN = "plain PyTorch"
EXPERIMENT = "benchmark-train"


@dataclass
class Workspace:
    """Everything both contenders share: configuration, the tokenized rows, the MLflow store."""

    configs: dict[int, Any]  # workers → OncallConfig
    request: Any  # pipelines.training.job.TrainRequest
    labels: Any  # LabelSet
    stats: Any  # WindowStats
    pad_token_id: int
    train: Any  # materialized ray.data.Dataset: input_ids, labels
    validation: Any
    train_rows: Any  # the same rows as pandas, for the plain loop
    validation_rows: Any
    tracker: Any  # pipelines.registry.tracking.Tracker of the throwaway store
    checkpoints: Path  # the plain loop's saved states


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipelines.ray_runtime import ray_session

    workdir = args.workdir.resolve()
    _warn_about_other_rays()
    load_before = os.getloadavg()
    started = time.monotonic()
    with ray_session():
        ray_init_s = time.monotonic() - started
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        log.info("ray.init: %.1f s", ray_init_s)
        space = _prepare(args, workdir)
        threads = _worker_threads(space.configs[1], workdir)
        log.info("a 1-CPU Ray Train worker runs torch with %s", threads)
        contenders: dict[str, Callable[[], dict[str, float]]] = {
            PLAIN: lambda: _plain_fit(space, threads["torch_threads"])
        }
        for workers in args.workers:
            contenders[f"Ray Train, {workers} worker{'s' if workers > 1 else ''}"] = lambda workers=workers: (
                _ray_fit(space, workers)
            )
        measured = alternate(args.rounds, contenders)
        shutdown_started = time.monotonic()
    ray_shutdown_s = time.monotonic() - shutdown_started
    report = _report(args, space, measured, threads, ray_init_s, ray_shutdown_s, load_before)
    publish(report, record=not args.no_record)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of A B C (default 2)")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument(
        "--workdir", type=Path, default=Path(".oncall/bench/train"), help="archive, base, stores (reused)"
    )
    parser.add_argument("--days", type=int, default=12, help="archive days (4 of them are held out)")
    parser.add_argument("--tickets-per-day", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--workers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2], help="e.g. 1,2"
    )
    return parser.parse_args(argv)


def _warn_about_other_rays() -> None:
    """Two Ray clusters on one machine interfere, and so does any other busy process."""
    import psutil

    raylets = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"]
    if raylets:
        log.warning("another Ray cluster is running (raylet pid %s): timings will suffer", raylets)


# --- the shared workspace ---------------------------------------------------------------------


def _prepare(args: argparse.Namespace, workdir: Path) -> Workspace:
    """Archive and base (reused when present), then the product's data path up to tokenized,
    materialized train/validation rows; a fresh MLflow store for the runs."""
    from pipelines.config import load_config
    from pipelines.data.ownership import without_stale_ownership
    from pipelines.data.tokenize import tokenized_splits
    from pipelines.data.window import TimeSplit, count_window, read_window, summarise, train_labels
    from pipelines.model.base import load_tokenizer
    from pipelines.registry.tracking import Tracker
    from pipelines.training.job import TrainRequest

    size = f"{args.days}d-{args.tickets_per_day}t-{args.tenants}n"
    archive = _archive(workdir / f"archive-{size}", args)
    stores = workdir / "stores"  # MLflow runs, Ray checkpoints: thrown away on every start
    shutil.rmtree(stores, ignore_errors=True)
    overrides = {
        "data_dir": stores,
        "model.max_length": args.max_length,
        "data.max_description_chars": 120,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
    }
    configs = {
        workers: load_config(environ={}, overrides={**overrides, "train.workers": workers})
        for workers in sorted({1, *args.workers})
    }
    config = configs[1]
    builder = config.data.text_builder()
    base = _base(workdir / f"base-{size}-{args.max_length}", archive, builder, config)

    prepared = read_window(str(archive), builder, None, None).materialize()
    counts = count_window(prepared)
    split = TimeSplit.from_days(
        sorted(counts["day"].unique()), config.data.validation_days, config.data.test_days
    )
    marked = without_stale_ownership(prepared, split.train)
    if marked is not prepared:
        prepared, counts = marked, count_window(marked)
    labels = train_labels(counts, split)
    stats = summarise(counts, split, labels)
    datasets = tokenized_splits(prepared, split, labels, base, config.model.max_length)
    train, validation = datasets["train"].materialize(), datasets["validation"].materialize()
    train_rows, validation_rows = train.to_pandas(), validation.to_pandas()
    if len(train_rows) != stats.labelled["train"]:
        raise RuntimeError(f"{len(train_rows)} tokenized training rows, {stats.labelled['train']} counted")
    log.info(
        "%d training rows (%d steps of %d per epoch), %d validation rows, %d tenants, %.1f tokens/row",
        len(train_rows),
        math.ceil(len(train_rows) / args.batch_size),
        args.batch_size,
        len(validation_rows),
        len(labels),
        train_rows["input_ids"].map(len).mean(),
    )
    return Workspace(
        configs=configs,
        request=TrainRequest(archive_uri=str(archive), base_dir=base),
        labels=labels,
        stats=stats,
        pad_token_id=load_tokenizer(base, max_length=args.max_length).pad_token_id,
        train=train,
        validation=validation,
        train_rows=train_rows,
        validation_rows=validation_rows,
        tracker=Tracker(config),
        checkpoints=stores / "plain",
    )


def _archive(path: Path, args: argparse.Namespace) -> Path:
    from pipelines.data.sample.generator import SampleSpec, find_manifest, generate_archive

    if find_manifest(path) is not None:
        log.info("reusing archive %s", path)
        return path
    log.info("generating archive %s", path)
    spec = SampleSpec(
        days=args.days,
        tickets_per_day=args.tickets_per_day,
        tenants=args.tenants,
        start=dt.date(2026, 10, 1),
        seed=7,
    )
    generate_archive(spec, path, overwrite=True)
    return path


def _base(path: Path, archive: Path, builder: Any, config: Any) -> Path:
    from pipelines.training.init_base import init_base

    if (path / "config.json").is_file():
        log.info("reusing base %s", path)
        return path
    log.info("building a tiny base at %s", path)
    return init_base(
        "tiny",
        str(archive),
        path,
        builder,
        vocab_size=config.model.tokenizer_vocab_size,
        max_length=config.model.max_length,
        overwrite=True,
    )


def _worker_threads(config: Any, workdir: Path) -> dict[str, Any]:
    """torch threads and OMP_NUM_THREADS inside a Ray Train worker with the product's CPUs, and
    the wall seconds of that fit (an empty train function: Ray Train's own floor)."""
    import ray.train
    import ray.train.torch

    from pipelines.training.job import HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S

    out = workdir / "stores" / "probe.json"
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)  # as build_trainer does

    def probe(_: dict[str, Any]) -> None:
        import torch

        out.write_text(
            json.dumps(
                {
                    "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                }
            )
        )

    started = time.monotonic()
    ray.train.torch.TorchTrainer(
        probe,
        train_loop_config={},
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, resources_per_worker={"CPU": config.train.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(name="probe", storage_path=str(config.ray_storage_dir)),
    ).fit()
    return {**json.loads(out.read_text()), "empty_fit_s": time.monotonic() - started}


# --- contenders -------------------------------------------------------------------------------


def _plain_fit(space: Workspace, threads: int) -> dict[str, float]:
    """The product's training, epoch for epoch, in a plain loop in this process."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pipelines.model import batching
    from pipelines.model import steps as training_steps
    from pipelines.model.classifier import build_classifier, trainable_state_dict
    from pipelines.training.loop import CHECKPOINT_OPTIMIZER, CHECKPOINT_PROGRESS, CHECKPOINT_STATE

    config = space.configs[1]
    train_config = config.train
    script_s = _script_startup_s()
    torch.set_num_threads(threads)
    input_ids = space.train_rows["input_ids"].to_numpy()
    labels = space.train_rows["labels"].to_numpy()
    batch_size, accumulate = train_config.batch_size, train_config.grad_accum_steps
    total_steps = math.ceil(len(labels) / (batch_size * accumulate)) * train_config.epochs

    with space.tracker.run(EXPERIMENT, run_name="plain") as run:
        fit_started = time.time()
        torch.manual_seed(train_config.seed)
        model = build_classifier(
            space.request.base_dir,
            len(space.labels),
            pad_token_id=space.pad_token_id,
            model_config=config.model,
        )
        optimizer = training_steps.make_optimizer(model, train_config)
        scheduler = training_steps.make_scheduler(optimizer, total_steps, train_config.warmup_ratio)
        weights = training_steps.class_weights(
            [space.stats.train_tenant_counts[t] for t in space.labels.tenants], train_config.class_weighting
        )
        progress = {"epoch": -1, "step": 0}
        for epoch in range(train_config.epochs):
            model.train()
            losses, started = [], time.monotonic()
            order = np.random.default_rng(train_config.seed + epoch).permutation(len(labels))
            for index, start in enumerate(range(0, len(order), batch_size)):
                rows = order[start : start + batch_size]
                batch = batching.pad_batch(input_ids[rows], space.pad_token_id)
                batch["labels"] = torch.as_tensor(labels[rows], dtype=torch.long)
                output = training_steps.training_step(
                    model, batch, weights=weights, loss_scale=1 / accumulate, autocast_dtype=None
                )
                losses.append(output.loss)
                if (index + 1) % accumulate == 0:
                    training_steps.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
                    progress["step"] += 1
            if len(losses) % accumulate:
                training_steps.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
                progress["step"] += 1
            progress["epoch"] = epoch
            metrics = {
                "epoch": epoch,
                "step": progress["step"],
                "train_loss": float(np.mean(losses)),
                "epoch_seconds": time.monotonic() - started,
                **_plain_validation(model, space, weights),
            }
            run.metrics(metrics, step=progress["step"])  # as train_loop's rank 0 does
            folder = space.checkpoints / f"{run.run_id}-epoch-{epoch}"
            folder.mkdir(parents=True)
            state = {name: t.detach().cpu().contiguous() for name, t in trainable_state_dict(model).items()}
            save_file(state, folder / CHECKPOINT_STATE)
            torch.save(
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                folder / CHECKPOINT_OPTIMIZER,
            )
            (folder / CHECKPOINT_PROGRESS).write_text(json.dumps(progress))
        fit_ended = time.time()
    return {**_measurements(space, run.run_id, fit_started, fit_ended, workers=1), "script_s": script_s}


def _script_startup_s() -> float:
    """Seconds a fresh Python process takes to import what the plain loop needs: a plain
    training script pays them, this process paid them before the fit (Ray workers inside it)."""
    code = "import torch, transformers, peft, safetensors.torch, pipelines.model.classifier, pipelines.model.steps"
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.monotonic() - started


def _plain_validation(model: Any, space: Workspace, weights: Any) -> dict[str, float]:
    import torch

    from pipelines.model import batching
    from pipelines.model import steps as training_steps
    from pipelines.training.loop import VALIDATION_BATCH

    rows = space.validation_rows

    def batches() -> Any:
        for start in range(0, len(rows), VALIDATION_BATCH):
            part = rows.iloc[start : start + VALIDATION_BATCH]
            batch = batching.pad_batch(part["input_ids"].to_numpy(), space.pad_token_id)
            batch["labels"] = torch.tensor(part["labels"].to_numpy(), dtype=torch.long)
            yield batch

    logits, labels = training_steps.predict_logits(model, batches(), None)
    if len(labels) == 0:
        return {}
    loss = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    return {"val_loss": float(loss), "val_top1": float((logits.argmax(dim=1) == labels).float().mean())}


def _ray_fit(space: Workspace, workers: int) -> dict[str, float]:
    """The product's TorchTrainer on the materialized rows; Ray is already up."""
    from pipelines.errors import ModelError
    from pipelines.training.job import build_loop_config, build_trainer

    config = space.configs[workers]
    with space.tracker.run(EXPERIMENT, run_name=f"ray-{workers}") as run:
        loop_config = build_loop_config(
            config,
            space.request,
            space.labels,
            space.stats,
            pad_token_id=space.pad_token_id,
            run_id=run.run_id,
        )
        trainer = build_trainer(
            config,
            loop_config,
            {"train": space.train, "validation": space.validation},
            name=f"bench-{run.run_id}",
        )
        fit_started = time.time()
        result = trainer.fit()
        fit_ended = time.time()
        if result.checkpoint is None:
            raise ModelError(f"training finished without a checkpoint (error: {result.error})")
    figures = _measurements(space, run.run_id, fit_started, fit_ended, workers=workers)
    return {**figures, **_controller_phases(fit_started, fit_ended, figures)}


_PHASES = {  # Train v2 controller log line → phase (its own timing, seconds)
    "worker actors created": "worker actors",
    "Train context initialized on workers": "train context (torch, process group)",
    "Train function launched on workers": "train function launched (imports)",
}
_PHASE = re.compile(r"\[Worker Group Initialization\] (?:\d+ )?(.+?) in ([\d.]+)s")


def _controller_phases(fit_started: float, fit_ended: float, figures: dict[str, float]) -> dict[str, float]:
    """Where a Ray fit's fixed seconds went, from the Train controller's structured log (Ray
    internals: best effort, nothing when the format changed)."""
    try:
        import ray

        folder = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "train"
        logs = [p for p in folder.glob("ray-train-sys-controller-*.log") if p.stat().st_mtime >= fit_started]
        lines = [json.loads(line) for line in max(logs, key=lambda p: p.stat().st_mtime).open()]
    except (ImportError, AttributeError, OSError, ValueError):
        return {}

    def at(entry: dict[str, Any]) -> float:
        return dt.datetime.strptime(entry["asctime"], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    phases = {"phase:controller up": at(lines[0]) - fit_started}
    launched = shutdown = None
    for entry in lines:
        message = entry.get("message", "")
        match = _PHASE.search(message)
        if match and match.group(1) in _PHASES:
            phases[f"phase:{_PHASES[match.group(1)]}"] = float(match.group(2))
            if match.group(1) == "Train function launched on workers":
                launched = at(entry)
        if message.startswith("Shutting down") and shutdown is None:
            shutdown = at(entry)
    if launched is not None:
        phases["phase:in train_loop before the first step (+ 1st validation)"] = (
            fit_started + figures["start_s"] - launched
        )
    if shutdown is not None:
        last_logged = fit_ended - figures["end_s"]
        phases["phase:after the last metrics until worker shutdown"] = shutdown - last_logged
        phases["phase:worker shutdown, fit returns"] = fit_ended - shutdown
    return phases


def _measurements(
    space: Workspace, run_id: str, fit_started: float, fit_ended: float, *, workers: int
) -> dict[str, float]:
    """Figures of one fit, from the per-epoch metrics its loop logged to MLflow (epoch_seconds,
    step, val_top1, and the wall-clock time each epoch's metrics were logged at)."""
    client = space.tracker.client
    epochs = sorted(client.get_metric_history(run_id, "epoch_seconds"), key=lambda m: m.step)
    steps = max(m.value for m in client.get_metric_history(run_id, "step"))
    top1 = client.get_metric_history(run_id, "val_top1")
    in_loop = sum(m.value for m in epochs)
    first_logged, last_logged = epochs[0].timestamp / 1000, epochs[-1].timestamp / 1000
    wall = fit_ended - fit_started
    start = first_logged - epochs[0].value - fit_started  # before the first step (+ 1st validation)
    end = fit_ended - last_logged  # after the last epoch's metrics: checkpoint, shutdown
    figures = {
        "wall_s": wall,
        "in_loop_s": in_loop,
        "steps": steps,
        "examples": len(space.train_rows) * len(epochs),
        "fixed_s": wall - in_loop,
        "start_s": start,
        "between_s": wall - in_loop - start - end,  # validations, checkpoints
        "end_s": end,
        "val_top1": max(top1, key=lambda m: m.step).value if top1 else math.nan,
        **{f"epoch:{index}": m.value for index, m in enumerate(epochs)},
        "workers": workers,
    }
    log.info("%s", {k: round(v, 3) for k, v in figures.items()})
    return figures


# --- the table --------------------------------------------------------------------------------


def _report(
    args: argparse.Namespace,
    space: Workspace,
    measured: dict[str, list[dict[str, float]]],
    threads: dict[str, Any],
    ray_init_s: float,
    ray_shutdown_s: float,
    load_before: tuple[float, float, float],
) -> Report:
    report = Report(
        "train: Ray Train vs a plain PyTorch loop",
        [
            "contender",
            "wall s",
            "in-loop s",
            "epochs s",
            "steps",
            "ms/step",
            "examples/s",
            "fixed s",
            "start / between / end s",
            "val top-1",
            "fixed overhead s (≤ 20)",
            "vs a plain script s",
            "per-step overhead (≤ 10%)",
            "same, epochs 2+",
        ],
    )
    med = {name: _medians(runs) for name, runs in measured.items()}
    plain = med[PLAIN]
    plain_per_example = plain["in_loop_s"] / plain["examples"]
    plain_later = _later_epochs_s(plain)
    for name, m in med.items():
        per_example = m["in_loop_s"] / m["examples"]
        if name == PLAIN:
            fixed_cell, script_cell, step_cell, later_cell = (
                "-",
                f"(imports {plain['script_s']:.1f})",
                "-",
                "-",
            )
        else:
            fixed_overhead = m["fixed_s"] - plain["fixed_s"]
            step_overhead = per_example / plain_per_example - 1
            fixed_cell = f"{fixed_overhead:+.1f} {_verdict(fixed_overhead <= TARGET_FIXED_S)}"
            script_cell = f"{fixed_overhead - plain['script_s']:+.1f}"
            step_cell = f"{step_overhead:+.1%} {_verdict(step_overhead <= TARGET_STEP_OVERHEAD)}"
            # Every epoch is the same rows: later epochs' seconds compare directly, any workers.
            later_cell = f"{_later_epochs_s(m) / plain_later - 1:+.1%}" if plain_later else "n/a"
        report.add(
            name,
            m["wall_s"],
            m["in_loop_s"],
            ", ".join(f"{m[f'epoch:{i}']:.1f}" for i in range(sum(k.startswith("epoch:") for k in m))),
            int(m["steps"]),
            1000 * m["in_loop_s"] / m["steps"],
            m["examples"] / m["in_loop_s"],
            m["fixed_s"],
            f"{m['start_s']:.1f} / {m['between_s']:.1f} / {m['end_s']:.1f}",
            m["val_top1"],
            fixed_cell,
            script_cell,
            step_cell,
            later_cell,
        )
    config = space.configs[1]
    report.notes += [
        f"job: {len(space.train_rows):,} training rows × {args.epochs} epoch(s), batch {args.batch_size}, "
        f"max_length {args.max_length} (dynamic padding, "
        f"{space.train_rows['input_ids'].map(len).mean():.1f} tokens/row), "
        f"{len(space.validation_rows):,} validation rows, {len(space.labels)} tenants; tiny Qwen3 + LoRA "
        f"r={config.model.lora.r}; archive {args.days} days × {args.tickets_per_day} tickets; "
        f"medians of {args.rounds} round(s), contenders alternating.",
        "wall s: the whole fit (Ray: `trainer.fit()` with Ray already up); in-loop s: the step loops "
        "(train_loop's `epoch_seconds`, the plain loop timed the same way, both including their "
        "batch iterator); fixed s = wall − in-loop, split into start (before the first step, plus the "
        "first validation), between (later validations, checkpoints) and end (after the last "
        "epoch's metrics: the last checkpoint, tear-down). Fixed overhead = Ray fixed − plain fixed.",
        "vs a plain script: the fixed overhead less the seconds a fresh Python process takes to import "
        "torch, transformers, peft and the training modules (the plain loop ran in a process that had "
        "them already; a Ray Train worker is a fresh process and pays them inside the fit).",
        "per-step overhead: seconds per example inside the step loops against the plain loop's, minus 1 "
        "(for 1 worker the same as per step: same steps, same batches). With 2 workers each worker "
        "steps on its own batch of the same size (half as many steps) and gets 1 thread on the "
        "2 cores, so a value below 0 is a speed-up over the 1-thread plain loop. Epochs 2+: the same "
        "from the later epochs only, without the first epoch's one-off start of the data pipeline "
        "(for Ray: the streaming split of the training dataset, started by the first batch).",
        f"threads: inside a Ray Train worker with {config.train.cpus_per_worker:g} CPU, "
        f"torch.get_num_threads() = {threads['torch_threads']} "
        f"(OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}); the plain loop ran with "
        f"torch.set_num_threads({threads['torch_threads']}).",
        f"Ray Train's floor: a fit of an empty train function (1 worker) took {threads['empty_fit_s']:.1f} s; "
        f"the Train controller polled its workers every "
        f"{os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S', '2.0 (default)')} s "
        "(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S; pipelines.training.job sets 0.5 unless it is set).",
        *(
            f"{name}, where the fixed seconds went (Train controller log, median s): "
            + ", ".join(f"{k.removeprefix('phase:')} {v:.1f}" for k, v in m.items() if k.startswith("phase:"))
            for name, m in med.items()
            if any(k.startswith("phase:") for k in m)
        ),
        f"not in any wall: ray.init {ray_init_s:.1f} s (local cluster, no dashboard), ray.shutdown "
        f"{ray_shutdown_s:.1f} s, data preparation and tokenizing (done once, materialized, shared).",
        "per round, wall s: "
        + "; ".join(
            f"{name} " + ", ".join(f"{r['wall_s']:.0f}" for r in runs) for name, runs in measured.items()
        ),
        f"load average before: {load_before[0]:.2f} (1 min), after: {os.getloadavg()[0]:.2f}.",
    ]
    return report


def _later_epochs_s(figures: dict[str, float]) -> float:
    """Seconds of every epoch but the first (0 with a single epoch)."""
    return sum(v for k, v in figures.items() if k.startswith("epoch:") and k != "epoch:0")


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for run in runs for k in run)
    return {k: median([run[k] for run in runs if k in run]) for k in keys}


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    main()
