"""``rescore``: our Ray Data rescoring vs the loop a user would otherwise write.

    python -m benchmarks.rescore            # 50 days × 2,000 = 100k tickets

The naive loop: pandas reads each day's Parquet file, the classifier as a user loads it (base
plus LoRA adapter, not merged) scores batches padded to ``max_length``, and pandas writes the
answers. Ours: ``pipelines.inference.rescore.rescore`` end to end (a local Ray started and stopped, the
registry read, per-day commits, the MLflow summary), exactly what ``oncall-router rescore`` does.
Each contender scores every ticket once, in two halves of the archive that alternate with the
other contender's (A B A B), so drift hits both alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.report import Report, publish
from benchmarks.workspace import Workspace, prepare_workspace
from pipelines.contract.archive import Archive
from pipelines.contract.rows import split_valid_rows
from pipelines.contract.text import TextBuilder
from pipelines.data.sample.generator import SampleSpec
from pipelines.inference.rescore import RescoreRequest, rescore
from pipelines.model.artifact import load_classifier
from pipelines.registry.versions import Registry

log = logging.getLogger("benchmarks.rescore")


def ours(workspace: Workspace, since: dt.date, until: dt.date, out: Path) -> dict[str, float]:
    started = time.monotonic()
    summary = rescore(
        workspace.config, RescoreRequest(out_uri=str(out), since=since, until=until, on_bad_file="skip")
    )
    return {"rows": summary.rows_scored, "seconds": time.monotonic() - started}


def naive(
    workspace: Workspace, since: dt.date, until: dt.date, out: Path, batch_size: int
) -> dict[str, float]:
    """Per day: read, build texts, score fixed-shape batches, write. One process, torch's
    default threads. Model loading is timed too, as ours times its start-up."""
    started = time.monotonic()
    registry = Registry(workspace.config)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = registry.download(registry.get(version=workspace.version), Path(folder))
        model, tokenizer, labels, descriptor = load_classifier(model_dir, merge=False)
    builder = TextBuilder.from_settings(descriptor["text"])
    tenants = np.array(labels.tenants)
    rows = 0
    for partition in Archive(str(workspace.archive)).partitions():
        if not since <= partition.day <= until:
            continue
        frame, _ = split_valid_rows(pd.concat(pd.read_parquet(path) for path in partition.files))
        texts = builder.build_many(frame)
        best, confidence = [], []
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                texts[start : start + batch_size],
                padding="max_length",
                truncation=True,
                max_length=descriptor["max_length"],
                return_tensors="pt",
            )
            with torch.inference_mode():
                probabilities = torch.softmax(model(**encoded).logits, dim=-1)
            top = probabilities.max(dim=-1)
            best.append(top.indices.numpy())
            confidence.append(top.values.numpy())
        scored = frame[["ticket_id"]].assign(
            predicted_tenant=tenants[np.concatenate(best)], confidence=np.concatenate(confidence)
        )
        day_dir = out / f"date={partition.day.isoformat()}"
        day_dir.mkdir(parents=True, exist_ok=True)
        scored.to_parquet(day_dir / "part-0.parquet", index=False)
        rows += len(scored)
    return {"rows": rows, "seconds": time.monotonic() - started}


def token_lengths(workspace: Workspace, sample: int = 2000) -> np.ndarray:
    """Tokens per ticket (after truncation) on a sample, to explain what padding costs."""
    registry = Registry(workspace.config)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = registry.download(registry.get(version=workspace.version), Path(folder))
        _, tokenizer, _, descriptor = load_classifier(model_dir)
    first = Archive(str(workspace.archive)).partitions()[0]
    frame, _ = split_valid_rows(pd.concat(pd.read_parquet(path) for path in first.files).head(sample))
    texts = TextBuilder.from_settings(descriptor["text"]).build_many(frame)
    encoded = tokenizer(texts, truncation=True, max_length=descriptor["max_length"])["input_ids"]
    return np.array([len(ids) for ids in encoded])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=50)
    parser.add_argument("--tickets-per-day", type=int, default=2000)
    parser.add_argument("--naive-batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path(".oncall/bench"))
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    spec = SampleSpec(days=args.days, tickets_per_day=args.tickets_per_day, seed=12)
    workspace = prepare_workspace(args.workdir, spec)
    middle = spec.start + dt.timedelta(days=args.days // 2 - 1)
    halves = [(spec.start, middle), (middle + dt.timedelta(days=1), spec.end)]
    totals = {"ours": {"rows": 0.0, "seconds": 0.0}, "naive": {"rows": 0.0, "seconds": 0.0}}
    outputs = Path(tempfile.mkdtemp(prefix="rescore-bench-", dir=args.workdir))
    try:
        for index, (since, until) in enumerate(halves):
            for name in ("ours", "naive"):
                log.info("half %d (%s … %s): %s", index + 1, since, until, name)
                out = outputs / f"{name}-{index}"
                measured = (
                    ours(workspace, since, until, out)
                    if name == "ours"
                    else naive(workspace, since, until, out, args.naive_batch_size)
                )
                log.info("%s: %d rows in %.1f s", name, measured["rows"], measured["seconds"])
                for key in ("rows", "seconds"):
                    totals[name][key] += measured[key]
    finally:
        shutil.rmtree(outputs, ignore_errors=True)

    lengths = token_lengths(workspace)
    config = workspace.config
    report = Report(
        f"rescore: {totals['ours']['rows']:,.0f} tickets, ours vs a naive loop",
        ["contender", "tickets", "seconds", "tickets/s", "vs naive", "target"],
    )
    naive_rate = totals["naive"]["rows"] / totals["naive"]["seconds"]
    for name, label in (
        ("naive", "naive loop (pandas + adapter + pad to max_length)"),
        ("ours", "ours (rescore)"),
    ):
        rate = totals[name]["rows"] / totals[name]["seconds"]
        ratio = rate / naive_rate
        target = "" if name == "naive" else ("≥ 2× met" if ratio >= 2 else "≥ 2× MISSED")
        report.add(label, int(totals[name]["rows"]), totals[name]["seconds"], rate, f"{ratio:.2f}×", target)
    report.notes.extend(
        [
            f"each contender scored the archive in two alternating halves ({halves[0][0]} … {halves[0][1]}, "
            f"{halves[1][0]} … {halves[1][1]}); seconds include model loading and, for ours, Ray start-up "
            "and the MLflow summary, twice",
            f"ours: {config.rescore.actors} scoring actors × {config.rescore.cpus_per_actor:g} CPU, "
            f"batches of {config.rescore.batch_size}, merged LoRA, length-sorted dynamic padding; naive: "
            f"batches of {args.naive_batch_size}, torch default threads",
            f"tokens per ticket (sample of {len(lengths)}): mean {lengths.mean():.0f}, p50 "
            f"{np.median(lengths):.0f}, max {lengths.max()} of max_length {config.model.max_length}: padding "
            f"to max_length computes {config.model.max_length / lengths.mean():.1f}× the tokens",
        ]
    )
    publish(report, record=not args.no_record)


if __name__ == "__main__":
    main()
