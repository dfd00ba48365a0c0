"""``oncall-router``: a thin Typer layer over the jobs. Errors a user can fix are printed as one
message naming the problem, never as a traceback, with the error's exit code: 2 for a user error,
69 for an MLflow registry that fails to answer, 75 when another job holds the jobs' lock.

Options that override a config field are made by :func:`config_option`: their help and default
come from the field, and :func:`_config` applies them, so a command only passes on the options
that are not configuration. A command's result goes through :func:`_emit`: a table, or with
``--json`` one JSON object on stdout (logs and messages on stderr).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from functools import partial
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pipelines.cli.options import config_option, config_overrides
from pipelines.cli.render import (
    console,
    print_decision,
    print_demo,
    print_evaluation,
    print_json,
    print_manifest,
    print_next_fires,
    print_nightly,
    print_rescore,
    print_retention,
    print_schedule_state,
    print_serving,
    print_training,
    print_validation,
    route_messages_to_stderr,
)
from pipelines.config import OncallConfig, load_config
from pipelines.contract.archive import Archive
from pipelines.data.sample.generator import SampleSpec, generate_archive_at
from pipelines.errors import OncallError
from pipelines.logs import heartbeat, setup_logging

app = typer.Typer(
    help="Route oncall tickets to the tenant that owns them, and keep learning as ownership changes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_VALIDATION_FAILED = 1
# The overlay `demo` runs with (package data, so an installed wheel has it too).
DEMO_OVERLAY = Path(__file__).with_name("demo.yaml")
DISTRIBUTION = "oncall-router"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="ONCALL_CONFIG",
        help="YAML file over the built-in defaults (platform/config/default.yaml lists them).",
    ),
]
DateOption = Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], show_default=False)]
ArchiveOption = Annotated[str | None, config_option("data.archive")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {package_version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, config_option("data_dir")] = None,
    config: ConfigOption = None,
    log_level: Annotated[str | None, config_option("logging.level")] = None,
    log_format: Annotated[str | None, config_option("logging.format")] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the result as one JSON object on stdout; everything else on stderr."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    if json_output:
        route_messages_to_stderr()
    ctx.obj = {"config_file": config, "json": json_output}


def _config(ctx: typer.Context, *overlays: Path, progress: bool = True) -> OncallConfig:
    """Configuration of a command: overlays (e.g. the demo's) below the user's --config, then the
    environment, then the command line's config options. Sets up logging as it says; with
    ``progress`` (every command but the long-running ones) a log that is not a terminal gets a
    'still running' line now and then. Call it before importing a job: MLflow and Hugging Face
    read the switches logging sets when they are imported."""
    user_file = (ctx.obj["config_file"],) if ctx.obj["config_file"] else ()
    config = load_config(*overlays, *user_file, overrides=config_overrides(ctx))
    tracker = setup_logging(config.logging)
    interval = config.logging.progress_interval_s
    if progress and interval > 0 and not sys.stderr.isatty():
        ctx.with_resource(heartbeat(tracker, interval))
    return config


def _emit(ctx: typer.Context, result: Any, human: Callable[[Any], None]) -> None:
    """A command's result: ``human`` prints it for people, ``--json`` as JSON for scripts."""
    if ctx.obj["json"]:
        print_json(result)
    else:
        human(result)


def _date(value: dt.datetime | None) -> dt.date | None:
    return value.date() if value else None


@app.command("sample-data")
def sample_data(
    ctx: typer.Context,
    out: Annotated[
        str | None,
        typer.Option(help="Archive directory or s3:// URI. Default: data.archive (<data-dir>/archive)."),
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
    target = out or config.archive_uri
    spec = SampleSpec(
        days=days,
        tickets_per_day=tickets_per_day,
        tenants=tenants,
        new_tenants=new_tenants,
        moves=moves,
        start=start.date(),
        seed=seed,
    )
    manifest = generate_archive_at(spec, target, config.object_store, overwrite=overwrite)
    _emit(ctx, {"archive": target, "manifest": manifest}, lambda _: print_manifest(target, manifest))


@app.command("init-base")
def init_base_command(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="Base preset to build.")] = "tiny",
    archive: ArchiveOption = None,
    out: Annotated[Path | None, typer.Option(help="Default <data-dir>/bases/<preset>.")] = None,
    vocab_size: Annotated[int | None, config_option("model.tokenizer_vocab_size")] = None,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Build a random-init Qwen3 base and a BPE tokenizer trained on the archive's ticket text (no
    download)."""
    config = _config(ctx)

    from pipelines.training.init_base import init_base  # torch + transformers: ~5 s, only where needed

    built = init_base(
        preset,
        config.archive_uri,
        out or config.preset_bases_dir / preset,
        config.data.text_builder(),
        vocab_size=config.model.tokenizer_vocab_size,
        max_length=config.model.max_length,
        seed=seed,
        overwrite=overwrite,
        store=config.object_store,
    )
    _emit(ctx, {"base": built}, lambda _: console.print(f"base: {built}"))


@app.command("validate")
def validate_command(
    ctx: typer.Context,
    archive: ArchiveOption = None,
    since: DateOption = None,
    until: DateOption = None,
) -> None:
    """Check an archive against the ticket contract; exit 1 when anything breaks it."""
    config = _config(ctx)
    report = Archive(config.archive_uri, config.object_store).validate(_date(since), _date(until))
    _emit(ctx, report, print_validation)
    if not report.ok:
        raise typer.Exit(EXIT_VALIDATION_FAILED)


@app.command("train")
def train_command(
    ctx: typer.Context,
    archive: ArchiveOption = None,
    since: DateOption = None,
    until: DateOption = None,
    workers: Annotated[int | None, config_option("train.workers", min=1)] = None,
    gpu: Annotated[bool | None, config_option("train.use_gpu", "--gpu/--cpu")] = None,
    epochs: Annotated[int | None, config_option("train.epochs", min=1)] = None,
    base: Annotated[str | None, config_option("model.base")] = None,
    register: Annotated[
        bool, typer.Option(help="Register the classifier as a new version with alias 'challenger'.")
    ] = True,
) -> None:
    """Train a tenant classifier on the resolved tickets of the window, evaluate it on the newest
    days, log everything to MLflow; prints the run id and the headline metrics."""
    config = _config(ctx)

    from pipelines.training.job import TrainRequest, resolve_base, train  # Ray + torch: only where needed

    request = TrainRequest(
        archive_uri=config.archive_uri,
        base_dir=resolve_base(config),
        since=_date(since),
        until=_date(until),
        register=register,
    )
    _emit(ctx, train(config, request), partial(print_training, config))


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
    config = _config(ctx)

    from pipelines.evaluation.job import evaluate_run  # Ray + torch: only where needed

    evaluation, details = evaluate_run(config, run_id, archive, _date(since), _date(until))
    result = {"run_id": run_id, "evaluation": evaluation, "details": details}
    _emit(ctx, result, lambda _: print_evaluation(run_id, evaluation, details))


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
    config = _config(ctx)

    from pipelines.registry.promotion import promote  # Ray + torch: only where needed

    decision = promote(config, version, archive_uri=archive, force=force, reason=reason)
    _emit(ctx, decision, partial(print_decision, config))
    if not decision.promoted:
        raise typer.Exit(EXIT_VALIDATION_FAILED)


@app.command("rollback")
def rollback_command(ctx: typer.Context) -> None:
    """Move alias 'champion' back to the previous champion (alias 'previous')."""
    config = _config(ctx)

    from pipelines.registry.promotion import rollback

    rolled_back, restored = rollback(config)
    result = {"model_name": config.registry.model_name, "champion_before": rolled_back, "champion": restored}
    _emit(
        ctx,
        result,
        lambda _: console.print(f"{config.registry.model_name}: champion {rolled_back} → {restored}"),
    )


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    port: Annotated[int | None, config_option("serve.port", min=1, max=65535)] = None,
    host: Annotated[str | None, config_option("serve.host")] = None,
    alias: Annotated[str | None, config_option("serve.alias")] = None,
) -> None:
    """Serve the routing endpoint (Ray Serve) until Ctrl-C; replicas follow the alias and switch
    to a newly promoted version by themselves."""
    config = _config(ctx, progress=False)

    import time

    from ray import serve

    from pipelines.ray_runtime import TerminatedError, ray_session, serve_environment
    from serve.app import check_port_free, deploy
    from serve.client import RouterClient

    check_port_free(config.serve.host, config.serve.port)  # before Ray starts: fail fast
    with ray_session(config, serve_environment(config.serve)):
        try:
            url = deploy(config)
            serving = {
                "endpoint": url,
                "model_uri": f"models:/{config.registry.model_name}@{config.serve.alias}",
            }
            serving["ready"] = RouterClient(url).ready()
            _emit(ctx, serving, lambda _: print_serving(config, url, ready=serving["ready"]))
            while True:
                time.sleep(1)
        except (KeyboardInterrupt, TerminatedError):
            console.print("stopping the routing endpoint")
        finally:
            serve.shutdown()


@app.command("rescore")
def rescore_command(
    ctx: typer.Context,
    archive: ArchiveOption = None,
    out: Annotated[str | None, config_option("rescore.out")] = None,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to score with. Default: champion.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Registered version to score with.")] = None,
    since: DateOption = None,
    until: DateOption = None,
    on_bad_file: Annotated[str | None, config_option("rescore.on_bad_file")] = None,
) -> None:
    """Score an archive in bulk with a registered version (Ray Data actor pool) into the scored
    table (Iceberg, warehouse <out>, one commit per version and day); committed days are skipped,
    so re-running resumes."""
    config = _config(ctx)

    from pipelines.inference.rescore import RescoreRequest, rescore  # Ray + torch: only where needed
    from pipelines.registry.lock import jobs_lock

    request = RescoreRequest(alias=alias, version=version, since=_date(since), until=_date(until))
    with jobs_lock(config, "rescore"):
        summary = rescore(config, request)
    _emit(ctx, summary, print_rescore)


@app.command("retention")
def retention_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed and why; remove nothing (no lock).")
    ] = False,
) -> None:
    """Remove old Ray Train checkpoints, ended Ray sessions' logs and abandoned scratch directories
    by policy (retention.*), never the data of a version holding champion, previous or challenger
    nor of a run in progress. Exit 1 when a directory could not be removed."""
    config = _config(ctx)

    from pipelines.jobs.retention import run_retention  # MLflow: only where needed

    result = run_retention(config, dry_run=dry_run)
    _emit(ctx, result, print_retention)
    if not result.ok:
        raise typer.Exit(EXIT_VALIDATION_FAILED)


@app.command("schedule")
def schedule_command(
    ctx: typer.Context,
    cron: Annotated[str | None, config_option("nightly.cron")] = None,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many nightly runs. Default: run until stopped.")
    ] = None,
) -> None:
    """Run the nightly on a cron schedule until Ctrl-C (or SIGTERM): a fire at T runs the nightly
    of T's date minus one day (UTC); on start, the latest missed date runs once."""
    config = _config(ctx, progress=False)

    from pipelines.jobs.schedule import due_date, next_fires, nightly_date, run_schedule, validate_cron

    expression = validate_cron(config.nightly.cron)  # before anything heavy: fail fast
    now = dt.datetime.now(dt.UTC)
    print_next_fires([(fire, nightly_date(fire)) for fire in next_fires(expression, now, 3)])

    from pipelines.jobs.nightly import NightlyRequest, last_successful_date, run_nightly  # Ray + torch
    from pipelines.ray_runtime import TerminatedError, ray_session

    done = last_successful_date(config)
    print_schedule_state(done, due_date(expression, done, now))
    with ray_session(config):  # one Ray for every run; SIGTERM unwinds through it
        try:
            runs = run_schedule(
                expression,
                run=lambda date: _emit(ctx, run_nightly(config, NightlyRequest(date=date)), print_nightly),
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
    archive: ArchiveOption = None,
) -> None:
    """The online-learning loop for one date: new archive days + feedback → incremental training
    (warm start, replay, head growth) → register → gate → promote → rescore. Re-running a
    finished date does nothing; a crashed one resumes."""
    config = _config(ctx)

    from pipelines.jobs.nightly import NightlyRequest, default_date, run_nightly  # Ray + torch

    _emit(ctx, run_nightly(config, NightlyRequest(date=_date(date) or default_date())), print_nightly)


@app.command("demo")
def demo(ctx: typer.Context) -> None:
    """The main job end to end on the embedded default: sample archive and tiny base, first
    champion, Serve up, tickets routed over HTTP, the next days arrive, nightly (warm start, new
    tenants, gate), the new champion hot-swapped into Serve, the tickets again, rescoring."""
    config = _config(ctx, DEMO_OVERLAY)

    from pipelines.cli.demo import run_demo  # Ray + torch: only where needed

    _emit(ctx, run_demo(config), partial(print_demo, config))


def main() -> None:
    """Console-script entry point: user errors become one clear line on stderr."""
    try:
        app()
    except OncallError as exc:
        Console(stderr=True, soft_wrap=True).print(
            f"error: {exc}", markup=False, highlight=False, style="bold red"
        )
        sys.exit(exc.exit_code)  # 2 unless the error class says otherwise
