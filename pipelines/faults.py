"""Fault injection: the one way tests make a job fail at a named point, as a crash would there.

A job request carries ``faults: Faults`` (empty by default: production never sets it). Each job
calls :meth:`Faults.check` at its points; a planned fault fires once:

- ``nightly.after.<step>`` (``ingest``, ``train``, ``register``, ``gate``, ``rescore``,
  ``retention``): the nightly raises :class:`InjectedFaultError` right after that step, as a crash
  between steps would.
- ``serve.model.stall``: unlike the others it fires on every call: each scoring call of a model
  replica waits ``serve.request_timeout_s`` + 1 s (the tests of the 504 and the bounded queue).
- ``train.worker_exit``: the last Ray Train worker kills its own process (``os._exit``) at global
  step ``at_step``, as a lost node would; ``marker`` (a file) records that it fired, so the
  restarted worker group trains on. Fired by :func:`pipelines.training.loop.train_loop`.

Plain values only: a plan is pickled to Ray workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class InjectedFaultError(RuntimeError):
    """A planned test fault (never raised in production: no plan, no fault)."""


@dataclass(frozen=True)
class Fault:
    point: str
    at_step: int | None = None  # for points inside a loop
    marker: Path | None = None  # for points that kill a process: records that it fired once


@dataclass(frozen=True)
class Faults:
    planned: tuple[Fault, ...] = field(default_factory=tuple)

    @classmethod
    def at(cls, point: str, *, at_step: int | None = None, marker: Path | None = None) -> Faults:
        return cls((Fault(point, at_step, marker),))

    def planned_at(self, point: str) -> Fault | None:
        return next((fault for fault in self.planned if fault.point == point), None)

    def check(self, point: str) -> None:
        """Raise :class:`InjectedFaultError` if a fault is planned at ``point``."""
        if self.planned_at(point) is not None:
            raise InjectedFaultError(f"fault injection: stopped at {point}")
