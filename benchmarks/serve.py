"""``serve``: our Ray Serve endpoint vs the same classifier behind plain FastAPI + uvicorn.

    python -m benchmarks.serve --base tiny
    python -m benchmarks.serve --base compute-bound

Each contender runs as its own server process on loopback and is loaded by the same closed-loop
generator at each concurrency; contenders alternate round by round. The in-process part times
the classifier alone, merged LoRA vs unmerged adapter, to show what a forward pass costs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from benchmarks.load import LoadResult, run_load
from benchmarks.report import Report, alternate, median, publish
from benchmarks.workspace import BASES, Workspace, prepare_workspace
from pipelines.contract.archive import Archive
from pipelines.data.sample.generator import SampleSpec
from serve.contract import TicketIn

log = logging.getLogger("benchmarks.serve")

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TICKET_FIELDS = tuple(TicketIn.model_fields)
# Enough tickets for request bodies; the archive is not what is measured here.
SPEC = SampleSpec(days=2, tickets_per_day=2000, seed=11)


@dataclass(frozen=True)
class Contender:
    """A server command line and the environment it runs with."""

    name: str
    command: Callable[[int], list[str]]
    env: Mapping[str, str] = field(default_factory=dict)


def contenders(workspace: Workspace, replicas: int) -> dict[str, Contender]:
    serve_env = {
        "ONCALL_SERVE__MIN_REPLICAS": str(replicas),
        "ONCALL_SERVE__MAX_REPLICAS": str(replicas),
        # Stopping a direct-ingress server waits this long for load balancers; none here.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }

    def ours(port: int) -> list[str]:
        return [str(BIN / "oncall-router"), "serve", "--port", str(port)]

    def plain(port: int) -> list[str]:
        return [
            str(BIN / "uvicorn"),
            "--factory",
            "benchmarks.plain_app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]

    return {
        "plain": Contender("plain FastAPI", plain),
        "serve-ray-defaults": Contender(
            "Ray Serve, Ray's default settings",
            ours,
            {**serve_env, "ONCALL_SERVE__THROUGHPUT_OPTIMIZED": "false"},
        ),
        "serve": Contender(
            "Ray Serve, throughput-optimized (shipped)",
            ours,
            {**serve_env, "ONCALL_SERVE__THROUGHPUT_OPTIMIZED": "true"},
        ),
    }


def workspace_env(workspace: Workspace) -> dict[str, str]:
    return {
        "ONCALL_DATA_DIR": str(workspace.config.data_dir),
        "ONCALL_DATA__ARCHIVE": str(workspace.archive),
        "ONCALL_MODEL__MAX_LENGTH": str(workspace.config.model.max_length),
    }


def measure_server(
    contender: Contender,
    workspace: Workspace,
    bodies: Sequence[Mapping[str, Any]],
    concurrencies: Sequence[int],
    seconds: float,
    port: int,
) -> dict[str, Any]:
    """Start the server, load it at each concurrency, stop it; start-up seconds included."""
    env = {**os.environ, **workspace_env(workspace), **contender.env}
    started = time.monotonic()
    process = subprocess.Popen(
        contender.command(port), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}", contender.name)
        startup_s = time.monotonic() - started
        loads = {
            c: run_load(f"http://127.0.0.1:{port}/v1/route", bodies, concurrency=c, seconds=seconds)
            for c in concurrencies
        }
    finally:
        _stop(process)
    for result in loads.values():
        log.info(
            "%s c=%d: %.1f req/s p50 %.1f ms p99 %.1f ms errors %d",
            contender.name,
            result.concurrency,
            result.requests_per_s,
            result.p50_ms,
            result.p99_ms,
            result.errors,
        )
    return {"startup_s": startup_s, "loads": loads}


def _wait_ready(process: subprocess.Popen, url: str, name: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
            raise RuntimeError(f"{name} exited with {process.returncode} before it was ready:\n{error}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or busy loading
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} not ready at {url} after {timeout_s:.0f} s")


def _stop(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM (the server shuts Serve and Ray down), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr:
        process.stderr.close()


def ticket_bodies(workspace: Workspace, limit: int = 2000) -> list[dict[str, Any]]:
    """Request bodies: real archive tickets, contract fields only."""
    first = Archive(str(workspace.archive)).partitions()[0]
    frame = pd.concat(pd.read_parquet(path) for path in first.files).head(limit)
    bodies = frame[list(TICKET_FIELDS)].astype(object).where(frame[list(TICKET_FIELDS)].notna(), None)
    return [{k: v for k, v in row.items() if v is not None} for row in bodies.to_dict("records")]


def in_process_rows(workspace: Workspace, bodies: Sequence[Mapping[str, Any]], rounds: int) -> list[list]:
    """The classifier alone (no HTTP), one thread as in a Serve replica: one ticket and a batch of
    32, merged LoRA (what we ship) vs the unmerged adapter."""
    import torch

    from pipelines.model.inference import TicketClassifier
    from pipelines.registry.versions import Registry

    torch.set_num_threads(1)
    registry = Registry(workspace.config)
    ref = registry.get(version=workspace.version)
    merged = registry.load_classifier(ref)
    unmerged = registry.load_classifier(ref, merge=False)

    def timing(classifier: TicketClassifier, size: int) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            classifier.predict(bodies[:size])  # warm
            reps = max(3, 64 // size)
            started = time.perf_counter()
            for rep in range(reps):
                classifier.predict(bodies[rep * size % 1000 : rep * size % 1000 + size])
            return {"ms": (time.perf_counter() - started) * 1000 / reps}

        return run

    rows = []
    for size in (1, 32):
        measured = alternate(rounds, {"merged": timing(merged, size), "unmerged": timing(unmerged, size)})
        merged_ms = median([m["ms"] for m in measured["merged"]])
        unmerged_ms = median([m["ms"] for m in measured["unmerged"]])
        rows.append([size, merged_ms, unmerged_ms, unmerged_ms / merged_ms, 1000 * size / merged_ms])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", choices=sorted(BASES), default="tiny")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per concurrency")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per contender")
    parser.add_argument("--replicas", type=int, default=2, help="Serve model replicas (fixed)")
    parser.add_argument("--contenders", default="plain,serve-ray-defaults,serve", help="comma-separated")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workdir", type=Path, default=Path(".oncall/bench"))
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    workspace = prepare_workspace(args.workdir, SPEC, base=args.base)
    bodies = ticket_bodies(workspace)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    available = contenders(workspace, args.replicas)
    chosen = [name.strip() for name in args.contenders.split(",")]
    unknown = [name for name in chosen if name not in available]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; choose from {sorted(available)}")
    measured = alternate(
        args.rounds,
        {
            name: lambda name=name: measure_server(
                available[name], workspace, bodies, concurrencies, args.seconds, args.port
            )
            for name in chosen
        },
    )
    report = server_report(args, measured, concurrencies, {k: c.name for k, c in available.items()})
    report.notes.extend(_notes(args))
    in_process = Report(
        f"serve ({args.base} base): the classifier in-process, 1 thread",
        [
            "tickets per call",
            "merged LoRA ms",
            "unmerged adapter ms",
            "unmerged / merged",
            "merged tickets/s",
        ],
    )
    for row in in_process_rows(workspace, bodies, args.rounds):
        in_process.add(*row)
    publish(report, record=not args.no_record)
    publish(in_process, record=not args.no_record)


def server_report(
    args: argparse.Namespace,
    measured: dict[str, list[dict]],
    concurrencies: list[int],
    names: Mapping[str, str],
) -> Report:
    report = Report(
        f"serve ({args.base} base): requests/s and latency over HTTP, median of {args.rounds} rounds",
        ["contender", "clients", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs plain", "start-up s"],
    )
    baseline = measured.get("plain")
    for key, runs in measured.items():
        for concurrency in concurrencies:
            loads: list[LoadResult] = [run["loads"][concurrency] for run in runs]
            rate = median([load.requests_per_s for load in loads])
            plain_rate = (
                median([run["loads"][concurrency].requests_per_s for run in baseline]) if baseline else None
            )
            report.add(
                names[key],
                concurrency,
                rate,
                median([load.p50_ms for load in loads]),
                median([load.p99_ms for load in loads]),
                sum(load.errors for load in loads),
                f"{rate / plain_rate:.2f}×" if plain_rate else "n/a",
                median([run["startup_s"] for run in runs]),
            )
    return report


def _notes(args: argparse.Namespace) -> list[str]:
    return [
        f"{args.seconds:g} s measured per concurrency after a 2 s warm-up; closed loop (each client "
        "waits for its answer); request bodies are archive tickets, one per request to /v1/route",
        f"Ray Serve: {args.replicas} model replicas (1 CPU, 1 torch thread each, @serve.batch up to 32) "
        "behind the FastAPI ingress; plain FastAPI: one uvicorn process, sync endpoint (thread pool), "
        "torch with its default threads",
        "load generator (asyncio + aiohttp) runs on the same 2 cores as the server",
        "throughput-optimized = RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress: no proxy hop; gRPC "
        "between deployments); RAY_SERVE_ENABLE_HA_PROXY was not tried: it binds every interface, and "
        "servers here stay on loopback",
    ]


if __name__ == "__main__":
    main()
