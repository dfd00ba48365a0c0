"""The Serve application: a FastAPI ingress composed with autoscaling model replicas.

``build_app`` is the application builder for ``serve run`` / ``serve deploy`` (see
``platform/serve/serve_config.yaml``); ``deploy`` is what ``oncall-router serve`` and the demo call.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from pipelines.config import OncallConfig, ServeConfig, load_config
from pipelines.errors import ConfigError
from pipelines.faults import Faults
from serve.ingress import BUSY_RETRY_AFTER_S, RouterIngress
from serve.router_model import ReplicaSettings, TicketRouterModel

log = logging.getLogger(__name__)

APP_NAME = "oncall-router"
MODEL_DEPLOYMENT = "TicketRouterModel"  # names that serve_config.yaml's overrides refer to
INGRESS_DEPLOYMENT = "RouterIngress"
INGRESS_CPUS = 0.25  # parses JSON and awaits the model: a fraction of a core is plenty
# Serve's own HTTP timeout is a backstop this much later than the ingress's own waits, so that a
# slow model is the ingress's declared 504 (a slow feedback database its 503), not Serve's 408.
SERVE_TIMEOUT_MARGIN_S = 5.0
# A request Serve itself turns away (a replica's queue is full) is a 503 with Retry-After too, like
# the ingress's own answer when the model replicas' queue is full.
BACKPRESSURE = BackpressureConfig(status_code=503, retry_after_s=BUSY_RETRY_AFTER_S)


def build_application(config: OncallConfig, faults: Faults | None = None) -> Application:
    """``faults``: a test's plan for the model replicas (``serve.model.stall``); never in production."""
    settings = config.serve
    check_exposure(settings)
    # Enough requests in flight per replica to fill a batch while the previous one runs.
    model_ongoing = max(2 * settings.max_batch_size, 2 * settings.target_ongoing_requests)
    model = serve.deployment(TicketRouterModel, name=MODEL_DEPLOYMENT).options(
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
        max_ongoing_requests=model_ongoing,
        max_queued_requests=settings.max_queued_requests,
        backpressure_config=BACKPRESSURE,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        logging_config=config.logging.serve_logging(),
        user_config=ReplicaSettings.of(settings).model_dump(),
    )
    ingress = serve.deployment(RouterIngress, name=INGRESS_DEPLOYMENT).options(
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": model_ongoing,
        },
        max_ongoing_requests=4 * model_ongoing,
        max_queued_requests=settings.max_queued_requests,
        backpressure_config=BACKPRESSURE,
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        logging_config=config.logging.serve_logging(),
    )
    return ingress.bind(model.bind(config, faults), config)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder: ``serve run serve.app:build_app config=prod.yaml data_dir=/data
    serve.alias=champion``. ``config`` is a YAML file over the defaults (without it: the file in
    ``ONCALL_CONFIG``, as for the CLI), ``data_dir`` the data directory, any other
    ``section.key`` an override; ``ONCALL_*`` variables apply as usual."""
    overrides = dict(args)
    config_file = overrides.pop("config", None) or os.environ.get("ONCALL_CONFIG")
    files = [Path(config_file)] if config_file else []
    return build_application(load_config(*files, overrides=overrides))


def deploy(config: OncallConfig, faults: Faults | None = None) -> str:
    """Start Serve on the running Ray, deploy, and return the base URL once replicas are up
    (they are ready as soon as the alias has a version; until then /readyz answers 503)."""
    host, port = config.serve.host, config.serve.port
    check_port_free(host, port)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": serve_timeout_s(config.serve)})
    serve.run(build_application(config, faults), name=APP_NAME, route_prefix="/")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown_host}:{port}"


def serve_timeout_s(settings: ServeConfig) -> float:
    """Serve's HTTP timeout (its answer is a bare 408): later than every wait of the ingress."""
    return max(settings.request_timeout_s, settings.feedback_timeout_s) + SERVE_TIMEOUT_MARGIN_S


def check_exposure(settings: ServeConfig) -> None:
    """No tokens on a non-loopback host is refused unless the operator allowed it explicitly: a
    missing Secret must not quietly open the endpoint to the network."""
    if settings.tokens() or _is_loopback(settings.host):
        return
    if not settings.allow_unauthenticated:
        raise ConfigError(
            f"serve.host {settings.host} is reachable from other machines and no token is configured: "
            "set ONCALL_SERVE_TOKENS, serve.auth_tokens or serve.auth_tokens_file (README, Security), "
            "or serve.allow_unauthenticated: true to run without auth"
        )
    log.warning(
        "AUTH IS OFF: serve.allow_unauthenticated is set and %s accepts requests from anyone who "
        "can reach it",
        settings.host,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_port_free(host: str, port: int) -> None:
    """A clear error instead of a proxy that fails to bind in the background."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"serve.port: cannot listen on {host}:{port} ({exc.strerror})") from None
