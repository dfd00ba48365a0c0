"""The nightly lock: one run at a time, and the refusal names the holder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.jobs.nightly import NightlyLockedError, exclusive_lock


def test_nightly_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    path = tmp_path / "nightly.lock"
    held = exclusive_lock(path)
    held.__enter__()
    try:
        with pytest.raises(NightlyLockedError, match=f"pid {os.getpid()}"), exclusive_lock(path):
            pass
    finally:
        held.__exit__(None, None, None)
    with exclusive_lock(path):  # released
        pass
