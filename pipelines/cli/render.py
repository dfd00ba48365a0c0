"""How the CLI shows results: rich tables on the console; reasons and problems as whole lines
(not wrapped in a table) so they can be read and grepped. With ``--json`` a command's result is
one JSON object on stdout instead (:func:`print_json`), and every other line goes to stderr."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.table import Table

from pipelines.config import OncallConfig

if TYPE_CHECKING:  # result types only: their modules import Ray and torch
    from pipelines.cli.demo import DemoResult
    from pipelines.contract.archive import ArchiveReport
    from pipelines.evaluation.metrics import Evaluation
    from pipelines.inference.summary import RescoreSummary
    from pipelines.jobs.nightly import NightlySummary
    from pipelines.jobs.retention import RetentionResult
    from pipelines.registry.promotion import Decision
    from pipelines.training.job import TrainResult

# soft_wrap: long paths and messages stay on one line (greppable, copy-pasteable).
console = Console(soft_wrap=True)


def route_messages_to_stderr() -> None:
    """``--json``: stdout holds the result only; every other line the CLI prints goes to stderr."""
    console.file = sys.stderr


def print_json(result: Any) -> None:
    """A command's result as one line of JSON on stdout (``--json``), for scripts."""
    sys.stdout.write(json.dumps(jsonable(result), ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def jsonable(value: Any) -> Any:
    """JSON data of a result: a dataclass's fields and public properties, a DataFrame's rows, a
    Counter's counts, sets sorted, dates and paths as strings, NaN as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({**_fields(value), **_properties(value)})
    if isinstance(value, pd.DataFrame):
        frame = value if isinstance(value.index, pd.RangeIndex) else value.reset_index()
        return jsonable(frame.to_dict(orient="records"))
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(jsonable(item) for item in value)
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return to_jsonable_python(value, fallback=str)


def _fields(value: Any) -> dict[str, Any]:
    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


def _properties(value: Any) -> dict[str, Any]:
    """Computed parts of a result (``ok``, ``rows_read``, ``headline``): scripts want them too."""
    return {
        name: getattr(value, name)
        for name, attribute in vars(type(value)).items()
        if isinstance(attribute, property) and not name.startswith("_")
    }


def print_validation(report: ArchiveReport) -> None:
    table = Table(title=f"archive {report.archive}", show_header=False)
    for label, value in (
        ("days", report.days),
        ("files", report.files),
        ("rows", report.rows),
        ("valid rows", report.valid_rows),
        ("unresolved (no tenant)", report.unresolved_rows),
        ("tenants", len(report.tenants)),
        *((f"rejected: {reason}", count) for reason, count in sorted(report.rejected.items())),
    ):
        table.add_row(label, str(value))
    console.print(table)
    for problem in report.problems:
        console.print(f"problem: {problem}", markup=False, style="red")
    for path, reasons in sorted(report.rejected_files.items()):
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        console.print(f"rejected rows: {path}: {counts}", markup=False)


def print_evaluation(run_id: str, evaluation: Evaluation, details: dict[str, Any]) -> None:
    table = Table(title=f"evaluation of run {run_id}", show_header=False)
    table.add_row("archive", str(details["archive"]))
    table.add_row("days", ", ".join(str(day) for day in details["days"]))
    table.add_row("rows of tenants the model cannot know", str(details["unseen_tenant_rows"]))
    _add_metric_rows(table, evaluation.metrics)
    console.print(table)
    _print_quality(evaluation.metrics)
    worst = evaluation.per_tenant[evaluation.per_tenant["support"] >= 5].nsmallest(5, "f1")
    if not worst.empty:
        console.print(
            "lowest F1 (support >= 5): " + ", ".join(f"{r.tenant} {r.f1:.2f}" for r in worst.itertuples())
        )


def print_serving(config: OncallConfig, url: str, ready: bool) -> None:
    console.print(f"routing endpoint: {url}  (API docs: {url}/docs)", markup=False)
    console.print(f"serving models:/{config.registry.model_name}@{config.serve.alias}", markup=False)
    if not ready:
        console.print(
            f"warning: no version has alias '{config.serve.alias}' yet; /readyz answers 503 and "
            f"replicas load one within {config.serve.alias_poll_interval_s:g} s of its promotion",
            markup=False,
        )
    if config.serve.auth_tokens:
        console.print("auth: on (Authorization: Bearer <token>)")
    console.print("Ctrl-C stops it.")


def print_next_fires(fires: list[tuple[dt.datetime, dt.date]]) -> None:
    """Upcoming (fire time, nightly date) pairs of the schedule."""
    for fire, date in fires:
        console.print(f"next fire: {fire:%Y-%m-%d %H:%M} UTC → nightly for {date}", markup=False)


def print_schedule_state(done: dt.date | None, due: dt.date | None) -> None:
    console.print(f"last successful nightly: {done or 'none'}", markup=False)
    if due is not None:
        console.print(f"missed or pending: nightly for {due} runs now", markup=False)


def print_demo(config: OncallConfig, result: DemoResult) -> None:
    print_manifest(result.archive, result.manifest)
    console.print(f"tiny base: {result.base}")
    if result.training is not None:
        print_training(config, result.training)
        print_decision(config, result.decision)
    else:
        console.print(f"first champion: version {result.first_champion} (reused from an earlier run)")
    print_nightly(result.nightly)
    _print_shown(result)
    print_rescore(result.rescore)
    _print_demo_summary(config, result)


def print_decision(config: OncallConfig, decision: Decision) -> None:
    verdict = "PROMOTED to champion" if decision.promoted else "REJECTED (stays registered, never serves)"
    console.print(f"{config.registry.model_name} version {decision.version}: {verdict}", markup=False)
    console.print(f"  champion before: {decision.champion or 'none'}", markup=False)
    for text in decision.reasons:
        console.print(f"  reason: {text}", markup=False)
    for row in decision.regressions:
        console.print(
            f"  regression: tenant {row['tenant']} recall {row['champion_recall']:.2f} → "
            f"{row['challenger_recall']:.2f} (n={row['support']})",
            markup=False,
        )
    for name, value in decision.metrics.items():
        console.print(f"  {name}: {value:.4f}", markup=False)


def print_training(config: OncallConfig, result: TrainResult) -> None:
    split = result.split
    table = Table(title=f"MLflow run {result.run_id}", show_header=False)
    table.add_row("tracking URI", config.tracking_uri)
    table.add_row("train days", f"{split.train[0]} … {split.train[-1]}")
    table.add_row("validation days", f"{split.validation[0]} … {split.validation[-1]}")
    table.add_row("test days", f"{split.test[0]} … {split.test[-1]}")
    table.add_row("tenants", str(len(result.labels)))
    for name, value in result.stats.as_metrics().items():
        table.add_row(name, f"{int(value):,}")
    table.add_row(
        "optimizer steps",
        f"{result.progress.get('step')} (resumed from {result.progress.get('resumed_from_step')})",
    )
    _add_metric_rows(table, result.headline)
    console.print(table)
    _print_quality(result.evaluation.metrics)
    console.print(f"model: {result.model_uri}")
    if result.version:
        console.print(f"registered: models:/{config.registry.model_name}/{result.version} (alias challenger)")


def _print_quality(metrics: dict[str, float]) -> None:
    """What an evaluation's headline numbers rest on, as whole lines: the abstain threshold
    (where it was fit) against the target, calibration, and the classic baseline next to the
    model."""
    if "accuracy_at_threshold" in metrics:
        fit = _threshold_origin(metrics)
        gap = metrics["accuracy_at_threshold"] - metrics["target_accuracy"]
        verdict = "reaches it" if gap >= 0 else f"misses it by {-gap:.3f}"
        console.print(
            f"abstain threshold {metrics['abstain_threshold']:.3f} ({fit}): routes "
            f"{metrics['coverage_at_threshold']:.1%} of these tickets, {metrics['accuracy_at_threshold']:.3f} "
            f"of them right (target {metrics['target_accuracy']:.3f}: {verdict})",
            markup=False,
        )
    if "ece_uncalibrated" in metrics:
        console.print(
            f"calibration: temperature {metrics['temperature']:.3f}, ECE "
            f"{metrics['ece_uncalibrated']:.4f} before → {metrics['ece']:.4f} after",
            markup=False,
        )
    if "baseline_top1" in metrics:
        names = [name for name in metrics if name.startswith("top") or name == "macro_f1"]
        console.print(
            f"classic baseline (TF-IDF + linear SVM, {metrics['baseline_train_rows']:,.0f} training tickets): "
            + ", ".join(
                f"{name} {metrics[f'baseline_{name}']:.3f} (model {metrics[name]:.3f})" for name in names
            ),
            markup=False,
        )


def _threshold_origin(metrics: dict[str, float]) -> str:
    if "threshold_fit_tickets" not in metrics:  # `evaluate`: the threshold the classifier holds
        return "the classifier's own"
    tickets = f"{metrics['threshold_fit_tickets']:.0f} validation tickets"
    return f"fallback: only {tickets}" if metrics.get("threshold_fallback") else f"fit on {tickets}"


def _add_metric_rows(table: Table, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) and abs(value) < 10 else f"{value:g}")


def print_rescore(summary: RescoreSummary) -> None:
    """Totals and per-day counts as tables; skipped files and top misroutes as whole lines."""
    table = Table(
        title=f"rescore with {summary.model_name} version {summary.model_version}", show_header=False
    )
    table.add_row("archive", summary.archive)
    table.add_row("output", summary.output)
    table.add_row("MLflow run", f"{summary.run_id} (experiment rescore)")
    table.add_row("days scored", str(len(summary.partitions)))
    table.add_row("days already committed (skipped)", str(len(summary.already_committed)))
    if summary.late_files:
        table.add_row("days scored again (files arrived late)", str(len(summary.late_files)))
    table.add_row("rows read", f"{summary.rows_read:,}")
    table.add_row("rows scored", f"{summary.rows_scored:,}")
    for reason, count in sorted(summary.rejected.items()):
        table.add_row(f"rejected: {reason}", f"{count:,}")
    table.add_row("abstained", f"{summary.abstained:,}")
    table.add_row("misrouted", f"{summary.misrouted:,}")
    if summary.previous_versions:
        table.add_row(
            f"changed vs version {', '.join(summary.previous_versions)}",
            f"{summary.changed:,} of {summary.compared:,}",
        )
    table.add_row("files skipped", str(len(summary.skipped_files)))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(table)
    for day in summary.by_date().itertuples(index=False):
        changed = f", {day.changed} of {day.compared} changed vs version {day.previous_version}"
        console.print(
            f"date {day.date}: {day.rows} rows, {day.scored} scored, {day.rejected} rejected, "
            f"{day.abstained} abstained, {day.misrouted} misrouted{changed if day.previous_version else ''}",
            markup=False,
        )
    for skipped in summary.skipped_files:
        console.print(f"skipped file: {skipped.path}: {skipped.reason}", markup=False, style="red")
    for service, count in summary.misrouted_services.most_common(5):
        console.print(f"top misrouted service: {service} ({count})", markup=False)
    for move, count in summary.misrouted_moves.most_common(5):
        console.print(f"top misroute: {move} ({count})", markup=False)


def print_retention(result: RetentionResult) -> None:
    """Totals as a table; every directory as a whole line: removed (or would be) or kept, and why."""
    from pipelines.jobs.retention import size_text

    removing = [v for v in result.plan if v.remove]
    table = Table(title="retention (dry run)" if result.dry_run else "retention", show_header=False)
    if result.dry_run:
        table.add_row("directories to remove", str(len(removing)))
        table.add_row("bytes to free", size_text(result.bytes_planned))
    else:
        table.add_row("directories removed", str(len(result.removed)))
        table.add_row("bytes freed", size_text(result.bytes_freed))
        table.add_row("could not remove", str(len(result.failed)))
    table.add_row("directories kept", str(len(result.plan) - len(removing)))
    console.print(table)
    done = "would remove" if result.dry_run else "removed"
    for verdict in result.plan:
        line = f"{verdict.kind} {verdict.uri} ({size_text(verdict.bytes)}): {verdict.reason}"
        if verdict.uri in result.failed:
            console.print(f"could not remove {line}: {result.failed[verdict.uri]}", markup=False, style="red")
        else:
            console.print(f"{done if verdict.remove else 'kept'} {line}", markup=False)


def print_nightly(summary: NightlySummary) -> None:
    from pipelines.jobs.nightly import describe

    table = Table(title=f"nightly {summary.date}", show_header=False)
    for name, value in describe(summary).items():
        table.add_row(name, str(value))
    console.print(table)
    for reason in summary.reasons:
        console.print(f"  gate reason: {reason}", markup=False)


def _print_shown(result: DemoResult) -> None:
    before, after = result.shown[0].before["model"]["version"], result.shown[0].after["model"]["version"]
    table = Table(
        title=f"held-out tickets routed by {result.endpoint}/v1/route/batch, before and after nightly"
    )
    for column in ("ticket", "kind", "owner", f"v{before} → (confidence)", f"v{after} → (confidence)"):
        table.add_column(column, overflow="fold")
    for item in result.shown:
        table.add_row(
            item.ticket["ticket_id"],
            item.kind,
            item.owner,
            _answer(item.before, item.owner),
            _answer(item.after, item.owner),
        )
    console.print(table)


def _answer(answer: dict[str, Any], owner: str) -> str:
    mark = "✓" if answer["tenant"] == owner else "✗"
    abstain = ", abstain" if answer["abstain"] else ""
    return f"{mark} {answer['tenant']} ({answer['confidence']:.2f}{abstain})"


def _print_demo_summary(config: OncallConfig, result: DemoResult) -> None:
    right = {
        "before": sum(item.before["tenant"] == item.owner for item in result.shown),
        "after": sum(item.after["tenant"] == item.owner for item in result.shown),
    }
    table = Table(title="demo summary", show_header=False)
    table.add_row("first champion", f"version {result.first_champion}")
    table.add_row(
        "nightly", f"{result.nightly.date}: {result.nightly.status}, gate {result.nightly.decision or '-'}"
    )
    table.add_row("champion now", f"version {result.nightly.champion_after}")
    table.add_row(
        "running endpoint switched",
        f"by itself (alias watch, no restart); on v{result.nightly.champion_after} "
        f"{result.hot_swap_seconds:.1f} s after nightly returned",
    )
    table.add_row(
        "held-out tickets routed right",
        f"{right['before']}/{len(result.shown)} before → {right['after']}/{len(result.shown)} after",
    )
    table.add_row("rescored", f"{result.rescore.rows_read:,} rows into {result.rescore.output}")
    console.print(table)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {config.tracking_uri}", markup=False)
    console.print(
        "Ray dashboard: run on a started cluster (ray start --head --dashboard-host 127.0.0.1; "
        "RAY_ADDRESS=auto oncall-router serve), then open http://127.0.0.1:8265",
        markup=False,
    )


def print_manifest(archive: Path, manifest: dict[str, Any]) -> None:
    table = Table(title=f"sample archive {archive}", show_header=False)
    table.add_row("days", f"{len(manifest['tickets_per_day'])} ({manifest['start']} … {manifest['end']})")
    table.add_row("tickets", f"{manifest['tickets']:,}")
    table.add_row("tenants", str(len(manifest["tenants"])))
    for move in manifest["ownership_moves"]:
        table.add_row("ownership move", f"{move['date']}: {move['service']} {move['from']} → {move['to']}")
    for tenant in manifest["new_tenants"]:
        table.add_row("new tenant", f"{tenant['date']}: {tenant['tenant']} ({', '.join(tenant['services'])})")
    console.print(table)
