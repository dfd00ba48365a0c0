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
