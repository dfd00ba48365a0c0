"""A small Python client of the routing endpoint (used by the demo, notebooks and benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import requests


class RouterHTTPError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class RouterClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def route(self, ticket: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/route", dict(ticket))

    def route_batch(self, tickets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self._call("POST", "/v1/route/batch", {"tickets": [dict(t) for t in tickets]})["results"]

    def feedback(self, ticket_id: str, tenant: str, source: str | None = None) -> dict[str, Any]:
        return self._call(
            "POST", "/v1/feedback", {"ticket_id": ticket_id, "tenant": tenant, "source": source}
        )

    def model(self) -> dict[str, Any]:
        return self._call("GET", "/v1/model")

    def ready(self) -> bool:
        try:
            return self.session.get(f"{self.base_url}/readyz", timeout=self.timeout_s).status_code == 200
        except requests.ConnectionError:
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.session.request(method, f"{self.base_url}{path}", json=body, timeout=self.timeout_s)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RouterHTTPError(response.status_code, detail)
        return response.json()
