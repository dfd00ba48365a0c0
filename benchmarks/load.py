"""A bounded closed-loop HTTP load generator (asyncio + aiohttp, one process, loopback only).

``concurrency`` clients each send one request, wait for the answer, send the next, for a fixed
number of seconds after a warm-up. One event loop keeps the generator's own CPU use low, which
matters on a 2-core machine where it shares the cores with the server it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.report import percentile


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


def run_load(
    url: str,
    bodies: Sequence[Mapping[str, Any]],
    *,
    concurrency: int,
    seconds: float,
    warmup_s: float = 2.0,
) -> LoadResult:
    """POST ``bodies`` (cycled) to ``url`` from ``concurrency`` clients; only answers that
    arrive after the warm-up count. A non-2xx answer or a failed connection is an error."""
    return asyncio.run(_load(url, bodies, concurrency, seconds, warmup_s))


async def _load(
    url: str, bodies: Sequence[Mapping[str, Any]], concurrency: int, seconds: float, warmup_s: float
) -> LoadResult:
    payloads: Iterator[Mapping[str, Any]] = itertools.cycle(bodies)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            try:
                async with session.post(url, json=next(payloads)) as response:
                    await response.read()
                    ok = response.status < 300
            except aiohttp.ClientError:
                ok = False
            done = time.perf_counter()
            if sent >= measure_from:
                if ok:
                    latencies.append((done - sent) * 1000)
                else:
                    errors += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return LoadResult(concurrency, len(latencies), errors, seconds, latencies)
