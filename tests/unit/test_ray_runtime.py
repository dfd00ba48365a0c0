"""Where a local Ray keeps its output (no Ray is started here)."""

from __future__ import annotations

from pathlib import Path

from pipelines.ray_runtime import MAX_TEMP_DIR_CHARS, _temp_dir_option


def test_ray_temp_dir_is_under_the_data_dir_when_its_socket_paths_fit(tmp_path: Path) -> None:
    short = Path("/tmp") / f"q{tmp_path.name[-6:]}" / "ray" / "sessions"
    try:
        assert _temp_dir_option(short) == {"_temp_dir": str(short)} and short.is_dir()
    finally:
        for path in (short, short.parent, short.parent.parent):
            path.rmdir()
    assert _temp_dir_option(None) == {}


def test_a_temp_dir_too_long_for_unix_sockets_falls_back_to_rays_default(tmp_path: Path) -> None:
    long = tmp_path / ("x" * MAX_TEMP_DIR_CHARS)
    assert _temp_dir_option(long) == {}
    assert not long.exists()
    assert 30 <= MAX_TEMP_DIR_CHARS <= 45  # 107 bytes minus Ray's session/socket names


def test_a_local_ray_unless_a_cluster_is_named() -> None:
    from pipelines.config import load_config
    from pipelines.ray_runtime import cluster_address

    default = load_config(environ={})
    assert cluster_address(default, environ={}) is None
    assert cluster_address(default, environ={"RAY_ADDRESS": "local"}) is None
    assert cluster_address(default, environ={"RAY_ADDRESS": "10.0.0.5:6379"}) == "10.0.0.5:6379"
    configured = load_config(environ={}, overrides={"ray.address": "auto"})
    assert cluster_address(configured, environ={"RAY_ADDRESS": "10.0.0.5:6379"}) == "auto"


def test_a_named_cluster_that_cannot_be_reached_is_one_line_naming_it() -> None:
    import socket

    import pytest

    from pipelines.ray_runtime import RayClusterError, _check_reachable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(RayClusterError, match=rf"cannot reach the Ray cluster at 127\.0\.0\.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(RayClusterError, match="is not host:port"):
        _check_reachable("nonsense")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        _check_reachable(f"ray://127.0.0.1:{listening.getsockname()[1]}")  # reachable: no error
