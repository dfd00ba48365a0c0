"""Object-store URIs reach the configured S3-compatible endpoint (moto on loopback)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.contract.archive import Archive
from pipelines.contract.storage import ObjectStore, is_remote
from pipelines.errors import ConfigError


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="tickets")
        yield endpoint
    server.stop()


def test_an_s3_archive_is_read_through_the_configured_endpoint(s3_endpoint: str, tmp_path: Path) -> None:
    store = ObjectStore(endpoint_url=s3_endpoint, region="us-east-1")
    filesystem, root = store.resolve("s3://tickets/archive")
    assert root == "tickets/archive"
    filesystem.create_dir(f"{root}/date=2026-10-01")
    table = pa.table({"ticket_id": ["t1", "t2"]})
    pq.write_table(table, f"{root}/date=2026-10-01/part-0.parquet", filesystem=filesystem)

    archive = Archive("s3://tickets/archive", store)
    [partition] = archive.partitions()
    assert str(partition.day) == "2026-10-01" and archive.num_rows(partition.files[0]) == 2


def test_local_paths_are_absolute_and_uris_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _, path = ObjectStore().resolve("archive")
    assert path == str(tmp_path / "archive")
    assert ObjectStore().resolve(f"file://{tmp_path}")[1] == str(tmp_path)
    assert is_remote("s3://b/k") and is_remote("gs://b/k")
    assert not is_remote("/data/archive") and not is_remote("file:///data") and not is_remote("C:/x")


def test_a_malformed_endpoint_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"storage\.endpoint_url 'minio:9000' must look like"):
        ObjectStore(endpoint_url="minio:9000").resolve("s3://tickets/archive")
