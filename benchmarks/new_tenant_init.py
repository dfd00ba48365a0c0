"""``new_tenant_init``: a new tenant's head row from its tickets (``mean``) against random init.

The question (issue #17, point 4): after one nightly, how well does a tenant that arrived with a
handful of tickets get routed, depending on how its head row starts? The nightly integration
test's world: a champion trained on days 1–7; a tenant arrives on day 10 and a service moves on
day 11; the nightly window (days 8–16, plus replayed earlier tickets) warm-starts from the
champion, once per setting of ``train.new_tenant_init`` and seed (settings alternate, the same
seeds for both). Measured on the held-out last two days with the trained classifier: recall of
the new tenant and top-1 over all tickets. Run by hand::

    python -m benchmarks.new_tenant_init               # ~20 min on 2 cores, appends to RESULTS.md
    python -m benchmarks.new_tenant_init --seeds 0 --no-record
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.report import Report, median, publish

log = logging.getLogger("benchmarks.new_tenant_init")

SETTINGS = ("random", "mean")
CHAMPION_DAYS = 7
HELD_OUT_DAYS = 2


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipelines.data.sample.generator import SampleSpec, generate_archive
    from pipelines.ray_runtime import ray_session

    spec = SampleSpec(
        days=16,
        tickets_per_day=args.tickets_per_day,
        tenants=16,
        new_tenants=1,
        moves=1,
        seed=args.archive_seed,
    )
    with tempfile.TemporaryDirectory(prefix="bench-new-tenant-") as folder, ray_session():
        root = Path(folder)
        manifest = generate_archive(spec, root / "archive")
        new_tenant = manifest["new_tenants"][0]["tenant"]
        champion_dir = _champion(args, spec, root)
        measured: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
        for seed in args.seeds:
            for setting in SETTINGS:
                log.info("seed %d: new_tenant_init=%s", seed, setting)
                measured[setting].append(
                    _nightly_training(args, spec, root, champion_dir, setting, seed, new_tenant)
                )
    _publish(args, measured, spec)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.new_tenant_init", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seeds", type=lambda s: [int(n) for n in s.split(",")], default=[0, 1], help="e.g. 0,1"
    )
    parser.add_argument("--archive-seed", type=int, default=34, help="34: the nightly test's world")
    parser.add_argument("--tickets-per-day", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to RESULTS.md")
    return parser.parse_args(argv)


def _config(root: Path, args: argparse.Namespace, **overrides: Any) -> Any:
    from pipelines.config import load_config

    return load_config(
        environ={},
        overrides={
            "data_dir": root / "data",
            "data.archive": str(root / "archive"),
            "model.base": str(root / "base"),
            "model.max_length": 128,
            "train.epochs": args.epochs,
            **overrides,
        },
    )


def _champion(args: argparse.Namespace, spec: Any, root: Path) -> Path:
    """The tiny base built on the archive and the champion trained on the first days."""
    from pipelines.registry.versions import Registry
    from pipelines.training.init_base import init_base
    from pipelines.training.job import TrainRequest, train

    config = _config(root, args)
    init_base(
        "tiny",
        str(root / "archive"),
        root / "base",
        config.data.text_builder(),
        vocab_size=2000,
        max_length=128,
    )
    until = spec.start + dt.timedelta(days=CHAMPION_DAYS - 1)
    result = train(config, TrainRequest(str(root / "archive"), root / "base", until=until, register=False))
    return Registry(config).download_run_model(result.run_id, root / "champion")


def _nightly_training(
    args: argparse.Namespace,
    spec: Any,
    root: Path,
    champion_dir: Path,
    setting: str,
    seed: int,
    new_tenant: str,
) -> dict[str, float]:
    """The nightly's warm-started training with one setting; held-out figures of its classifier."""
    from pipelines.registry.versions import Registry
    from pipelines.training.job import TrainRequest, train

    config = _config(root, args, **{"train.new_tenant_init": setting, "train.seed": seed})
    result = train(
        config,
        TrainRequest(
            str(root / "archive"),
            root / "base",
            since=spec.start + dt.timedelta(days=CHAMPION_DAYS),
            warm_start=champion_dir,
            replay_rows=900,
            register=False,
        ),
    )
    with tempfile.TemporaryDirectory() as folder:
        from pipelines.model.inference import TicketClassifier

        classifier = TicketClassifier.from_dir(
            Registry(config).download_run_model(result.run_id, Path(folder))
        )
    rows = _held_out(root / "archive", spec)
    predicted = [p.tenant for p in classifier.predict(rows.to_dict("records"))]
    right = rows["tenant"].to_numpy() == predicted
    arrived = (rows["tenant"] == new_tenant).to_numpy()
    return {
        "new_tenant_recall": float(right[arrived].mean()),
        "new_tenant_tickets": float(arrived.sum()),
        "top1": float(right.mean()),
    }


def _held_out(archive: Path, spec: Any) -> Any:
    from pipelines.contract.archive import Archive

    last = spec.start + dt.timedelta(days=spec.days - 1)
    store = Archive(str(archive))
    days = store.partitions(since=last - dt.timedelta(days=HELD_OUT_DAYS - 1), until=last)
    import pandas as pd

    frames = [store.read_file(path).to_pandas() for day in days for path in day.files]
    return pd.concat(frames, ignore_index=True).dropna(subset=["tenant"])


def _publish(args: argparse.Namespace, measured: dict[str, list[dict[str, float]]], spec: Any) -> None:
    report = Report(
        title="New tenants' head rows after one nightly: mean of their tickets vs random init",
        columns=["train.new_tenant_init", "new-tenant recall per seed", "median", "held-out top-1 (median)"],
    )
    for setting, runs in measured.items():
        recalls = [run["new_tenant_recall"] for run in runs]
        report.add(
            setting,
            ", ".join(f"{r:.2f}" for r in recalls),
            median(recalls),
            median([run["top1"] for run in runs]),
        )
    tickets = int(measured[SETTINGS[0]][0]["new_tenant_tickets"])
    report.notes.append(
        f"Archive seed {args.archive_seed}, {spec.tickets_per_day} tickets/day, 16 tenants + 1 new (day 10); "
        f"champion on days 1-{CHAMPION_DAYS}, nightly window days {CHAMPION_DAYS + 1}-16 with 900 replayed "
        f"tickets, {args.epochs} epochs, tiny base; held out: the last {HELD_OUT_DAYS} days "
        f"({tickets} tickets of the new tenant). Seeds {args.seeds}."
    )
    publish(report, record=not args.no_record)


if __name__ == "__main__":
    main()
