"""``oncall-router``: a thin Typer layer over the jobs. Errors a user can fix are printed as one
message naming the problem (exit 2), never as a traceback."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli.render import (
    _add_metric_rows,
    _print_decision,
    _print_demo_summary,
    _print_manifest_summary,
    _print_nightly,
    _print_rescore,
    _print_shown,
    _print_training,
    console,
)
from pipelines.config import OncallConfig, load_config
from pipelines.contract.archive import validate_archive
from pipelines.contract.text import TextBuilder
from pipelines.data.sample.generator import SampleSpec, generate_archive
from pipelines.errors import OncallError

app = typer.Typer(
    help="Route oncall tickets to the tenant that owns them, and keep learning as ownership changes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
log = logging.getLogger("oncall_router")

EXIT_USER_ERROR = 2
EXIT_VALIDATION_FAILED = 1

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Directory of every embedded store (MLflow db and artifacts, Ray storage, feedback "
        "db, bases). Default ./.oncall, or $ONCALL_DATA_DIR.",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="ONCALL_CONFIG",
        help="YAML file merged over platform/config/default.yaml. Or $ONCALL_CONFIG.",
    ),
]
DateOption = Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], show_default=False)]


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    log_level: Annotated[
        str, typer.Option(envvar="ONCALL_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
) -> None:
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    ctx.obj = {"config_file": config, "overrides": {"data_dir": data_dir}}


def _config(ctx: typer.Context, *profiles: Path, **overrides: Any) -> OncallConfig:
    """Configuration of a command: profiles (e.g. the demo's) below the user's --config."""
    user_file = (ctx.obj["config_file"],) if ctx.obj["config_file"] else ()
    return load_config(*profiles, *user_file, overrides={**ctx.obj["overrides"], **overrides})


def _date(value: dt.datetime | None) -> dt.date | None:
    return value.date() if value else None


@app.command("sample-data")
def sample_data(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option(help="Archive directory. Default: data.archive (<data-dir>/archive).")
    ] = None,
    days: Annotated[int, typer.Option(min=1)] = 30,
    tickets_per_day: Annotated[int, typer.Option(min=1)] = 2000,
    tenants: Annotated[int, typer.Option(min=2)] = 268,
    new_tenants: Annotated[int, typer.Option(min=0, help="Tenants that appear mid-range.")] = 3,
    moves: Annotated[int, typer.Option(min=0, help="Services that change owner mid-range.")] = 6,
    start: Annotated[
        dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="First day (YYYY-MM-DD).")
    ] = dt.datetime(2026, 10, 1),
    seed: int = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier sample archive in OUT.")] = False,
) -> None:
    """Generate a realistic, deterministic sample ticket archive with a manifest of its truth."""
    config = _config(ctx)
    target = out or Path(config.archive_uri)
    spec = SampleSpec(
        days=days,
        tickets_per_day=tickets_per_day,
        tenants=tenants,
        new_tenants=new_tenants,
        moves=moves,
        start=start.date(),
        seed=seed,
    )
    manifest = generate_archive(spec, target, overwrite=overwrite)
    _print_manifest_summary(target, manifest)


@app.command("init-base")
def init_base_command(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="Base preset to build.")] = "tiny",
    archive: Annotated[
        str | None, typer.Option(help="Archive whose ticket text trains the tokenizer.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Default <data-dir>/bases/<preset>.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Default model.tokenizer_vocab_size.")] = None,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Build a random-init Qwen3 base and a BPE tokenizer trained on the archive (no download)."""
    from pipelines.training.init_base import init_base  # torch + transformers: ~5 s, only where needed

    config = _config(ctx, **{"model.tokenizer_vocab_size": vocab_size})
    target = out or config.preset_bases_dir / preset
    built = init_base(
        preset,
        archive or config.archive_uri,
        target,
        TextBuilder.from_config(config.data),
        vocab_size=config.model.tokenizer_vocab_size,
        max_length=config.model.max_length,
        seed=seed,
        overwrite=overwrite,
    )
    console.print(f"base: {built}")


@app.command("validate")
def validate_command(
    ctx: typer.Context,
    archive: Annotated[str | None, typer.Option(help="Default: data.archive.")] = None,
    since: DateOption = None,
    until: DateOption = None,
) -> None:
    """Check an archive against the ticket contract; exit 1 when anything breaks it."""
    config = _config(ctx)
    report = validate_archive(archive or config.archive_uri, _date(since), _date(until))
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
        console.print(f"schema problem: {problem}", markup=False, style="red")
    if not report.ok:
        raise typer.Exit(EXIT_VALIDATION_FAILED)


@app.command("train")
def train_command(
    ctx: typer.Context,
    archive: Annotated[str | None, typer.Option(help="Archive URI. Default: data.archive.")] = None,
    since: DateOption = None,
    until: DateOption = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers (train.workers).")] = None,
    gpu: Annotated[
        bool | None, typer.Option("--gpu/--cpu", help="One GPU per worker (train.use_gpu).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="train.epochs")] = None,
    base: Annotated[
        str | None, typer.Option(help="'tiny' (a built preset) or a local Qwen3 directory.")
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the classifier as a new version with alias 'challenger'.")
    ] = True,
) -> None:
    """Train a tenant classifier on the resolved tickets of the window, evaluate it on the newest
    days, log everything to MLflow; prints the run id and the headline metrics."""
    from pipelines.training.job import TrainRequest, resolve_base, train  # Ray + torch: only where needed

    config = _config(
        ctx, **{"train.workers": workers, "train.use_gpu": gpu, "train.epochs": epochs, "model.base": base}
    )
    request = TrainRequest(
        archive_uri=archive or config.archive_uri,
        base_dir=resolve_base(config),
        since=_date(since),
        until=_date(until),
        register=register,
    )
    _print_training(config, train(config, request))


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Option(help="MLflow run id printed by 'train'.")],
    archive: Annotated[str | None, typer.Option(help="Default: the archive the run trained on.")] = None,
    since: DateOption = None,
    until: DateOption = None,
) -> None:
    """Evaluate a trained run's classifier (default: on its own test days) and log the report to
    the run (metrics eval_*, artifacts evaluation/<window>/)."""
    from pipelines.evaluation.job import evaluate_run  # Ray + torch: only where needed

    config = _config(ctx)
    evaluation, details = evaluate_run(config, run_id, archive, _date(since), _date(until))
    table = Table(title=f"evaluation of run {run_id}", show_header=False)
    table.add_row("archive", str(details["archive"]))
    table.add_row("days", ", ".join(str(day) for day in details["days"]))
    table.add_row("rows of tenants the model cannot know", str(details["unseen_tenant_rows"]))
    _add_metric_rows(table, evaluation.metrics)
    console.print(table)
    worst = evaluation.per_tenant[evaluation.per_tenant["support"] >= 5].nsmallest(5, "f1")
    if not worst.empty:
        console.print(
            "lowest F1 (support >= 5): " + ", ".join(f"{r.tenant} {r.f1:.2f}" for r in worst.itertuples())
        )


@app.command("promote")
def promote_command(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Option(help="Version to gate. Default: alias 'challenger'.")] = None,
    force: Annotated[
        bool, typer.Option(help="Promote even if the gate rejects it (the reason is logged).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why --force was needed.")] = "",
    archive: Annotated[
        str | None, typer.Option(help="Tickets to gate on. Default: data.archive, else the version's own.")
    ] = None,
) -> None:
    """Gate a version against the champion on the same tickets; promote it (alias 'champion',
    the old one becomes 'previous') only if it passes. Exit 1 when rejected."""
    from pipelines.registry.promotion import promote  # Ray + torch: only where needed

    config = _config(ctx)
    decision = promote(config, version, archive_uri=archive, force=force, reason=reason)
    _print_decision(config, decision)
    if not decision.promoted:
        raise typer.Exit(EXIT_VALIDATION_FAILED)


@app.command("rollback")
def rollback_command(ctx: typer.Context) -> None:
    """Move alias 'champion' back to the previous champion (alias 'previous')."""
    from pipelines.registry.promotion import rollback

    config = _config(ctx)
    rolled_back, restored = rollback(config)
    console.print(f"{config.registry.model_name}: champion {rolled_back} → {restored}")


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="serve.port (default 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="serve.host (default 127.0.0.1).")] = None,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve and follow (serve.alias).")
    ] = None,
) -> None:
    """Serve the routing endpoint (Ray Serve) until Ctrl-C; replicas follow the alias and switch
    to a newly promoted version by themselves."""
    import time

    from ray import serve

    from pipelines.jobs.ray_runtime import TerminatedError, ray_session, serve_environment
    from serve.app import check_port_free, deploy
    from serve.client import RouterClient

    config = _config(ctx, **{"serve.port": port, "serve.host": host, "serve.alias": alias})
    check_port_free(config.serve.host, config.serve.port)  # before Ray starts: fail fast
    with ray_session(serve_environment(config.serve)):
        try:
            url = deploy(config)
            console.print(f"routing endpoint: {url}  (API docs: {url}/docs)", markup=False)
            console.print(f"serving models:/{config.registry.model_name}@{config.serve.alias}", markup=False)
            if not RouterClient(url).ready():
                console.print(
                    f"warning: no version has alias '{config.serve.alias}' yet; /readyz answers 503 and "
                    f"replicas load one within {config.serve.alias_poll_interval_s:g} s of its promotion",
                    markup=False,
                )
            if config.serve.auth_tokens:
                console.print("auth: on (Authorization: Bearer <token>)")
            console.print("Ctrl-C stops it.")
            while True:
                time.sleep(1)
        except (KeyboardInterrupt, TerminatedError):
            console.print("stopping the routing endpoint")
        finally:
            serve.shutdown()


@app.command("rescore")
def rescore_command(
    ctx: typer.Context,
    archive: Annotated[str | None, typer.Option(help="Archive URI. Default: data.archive.")] = None,
    out: Annotated[
        str | None, typer.Option(help="Output root (rescore.out). Default: <data-dir>/scored.")
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to score with. Default: champion.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Registered version to score with.")] = None,
    since: DateOption = None,
    until: DateOption = None,
    on_bad_file: Annotated[
        str | None,
        typer.Option(help="fail: name a bad Parquet file and stop; skip: score the rest and list it."),
    ] = None,
) -> None:
    """Score an archive in bulk with a registered version (Ray Data actor pool) into
    <out>/model_version=<v>/date=YYYY-MM-DD/; committed days are skipped, so re-running resumes."""
    from pipelines.inference.rescore import RescoreRequest, rescore  # Ray + torch: only where needed

    config = _config(ctx, **{"rescore.out": out, "rescore.on_bad_file": on_bad_file})
    request = RescoreRequest(
        archive_uri=archive, alias=alias, version=version, since=_date(since), until=_date(until)
    )
    _print_rescore(rescore(config, request))


@app.command("schedule")
def schedule_command(
    ctx: typer.Context,
    cron: Annotated[
        str | None, typer.Option(help="nightly.cron (default '0 2 * * *'), evaluated in UTC.")
    ] = None,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many nightly runs. Default: run until stopped.")
    ] = None,
) -> None:
    """Run the nightly on a cron schedule until Ctrl-C (or SIGTERM): a fire at T runs the nightly
    of T's date minus one day (UTC); on start, the latest missed date runs once."""
    from pipelines.jobs.schedule import due_date, next_fires, nightly_date, run_schedule, validate_cron

    config = _config(ctx, **{"nightly.cron": cron})
    expression = validate_cron(config.nightly.cron)  # before anything heavy: fail fast
    now = dt.datetime.now(dt.UTC)
    for fire in next_fires(expression, now, 3):
        console.print(
            f"next fire: {fire:%Y-%m-%d %H:%M} UTC → nightly for {nightly_date(fire)}",
            markup=False,
        )

    from pipelines.jobs.nightly import NightlyRequest, last_successful_date, run_nightly  # Ray + torch
    from pipelines.jobs.ray_runtime import TerminatedError, ray_session

    done = last_successful_date(config)
    console.print(f"last successful nightly: {done or 'none'}", markup=False)
    due = due_date(expression, done, now)
    if due is not None:
        console.print(f"missed or pending: nightly for {due} runs now", markup=False)
    with ray_session():  # one Ray for every run; SIGTERM unwinds through it
        try:
            runs = run_schedule(
                expression,
                run=lambda date: _print_nightly(run_nightly(config, NightlyRequest(date=date))),
                last_done=lambda: last_successful_date(config),
                max_runs=max_runs,
                stop_on=(TerminatedError,),
            )
            console.print(f"scheduler: {runs} nightly run(s), stopping")
        except (KeyboardInterrupt, TerminatedError):
            console.print("stopping the scheduler")


@app.command("nightly")
def nightly_command(
    ctx: typer.Context,
    date: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"], help="The day to run for. Default: yesterday (UTC).", show_default=False
        ),
    ] = None,
    archive: Annotated[str | None, typer.Option(help="Archive URI. Default: data.archive.")] = None,
) -> None:
    """The online-learning loop for one date: new archive days + feedback → incremental training
    (warm start, replay, head growth) → register → gate → promote → rescore. Re-running a
    finished date does nothing; a crashed one resumes."""
    from pipelines.jobs.nightly import NightlyRequest, default_date, run_nightly  # Ray + torch

    config = _config(ctx)
    summary = run_nightly(config, NightlyRequest(date=_date(date) or default_date(), archive_uri=archive))
    _print_nightly(summary)


@app.command("demo")
def demo(ctx: typer.Context) -> None:
    """The main job end to end on the embedded default: sample archive and tiny base, first
    champion, Serve up, tickets routed over HTTP, the next days arrive, nightly (warm start, new
    tenants, gate), the new champion hot-swapped into Serve, the tickets again, rescoring."""
    from pipelines.cli.demo import run_demo  # Ray + torch: only where needed
    from pipelines.config import DEMO_CONFIG_FILE

    config = _config(ctx, DEMO_CONFIG_FILE)
    result = run_demo(config)
    _print_manifest_summary(result.archive, result.manifest)
    console.print(f"tiny base: {result.base}")
    if result.training is not None:
        _print_training(config, result.training)
        _print_decision(config, result.decision)
    else:
        console.print(f"first champion: version {result.first_champion} (reused from an earlier run)")
    _print_nightly(result.nightly)
    _print_shown(result)
    _print_rescore(result.rescore)
    _print_demo_summary(config, result)


def main() -> None:
    """Console-script entry point: user errors become one clear line on stderr."""
    try:
        app()
    except OncallError as exc:
        Console(stderr=True, soft_wrap=True).print(
            f"error: {exc}", markup=False, highlight=False, style="bold red"
        )
        sys.exit(EXIT_USER_ERROR)
