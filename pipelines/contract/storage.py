"""Where files live: a local path or an object-store URI, and the pyarrow filesystem to reach it.

Endpoint and region come from the configuration (``storage.*``), the same settings a user gives
any S3 client for AWS, MinIO or another S3-compatible store. Credentials never pass through
here: pyarrow, boto3 and pyiceberg take them from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, a profile, an instance or pod role).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.errors import ConfigError

OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme other than ``file``, such as ``s3://bucket/key``."""
    scheme = urlsplit(uri).scheme
    return bool(scheme) and len(scheme) > 1 and scheme != "file"  # 'C:' is a drive, not a scheme


@dataclass(frozen=True)
class ObjectStore:
    """Endpoint settings of the S3-compatible store (``None``: the SDK's defaults, i.e. AWS)."""

    endpoint_url: str | None = None
    region: str | None = None

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the path on it for a local path or a URI."""
        if urlsplit(uri).scheme == "s3" and (self.endpoint_url or self.region):
            return self.s3_filesystem(), uri.removeprefix("s3://")
        if not is_remote(uri):
            # A relative local path: absolute, since Ray tasks do not share the driver's cwd.
            local = uri.removeprefix("file://")
            return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError, OSError) as exc:
            raise ConfigError(f"{uri}: not a location pyarrow can open ({exc})") from None

    def s3_filesystem(self) -> pafs.S3FileSystem:
        options: dict[str, str] = {}
        if self.endpoint_url:
            endpoint = urlsplit(self.endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise ConfigError(
                    f"storage.endpoint_url {self.endpoint_url!r} must look like http(s)://host:port"
                )
            options = {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme}
        if self.region:
            options["region"] = self.region
        return pafs.S3FileSystem(**options)

    def pyiceberg_properties(self) -> dict[str, str]:
        """The same settings as pyiceberg FileIO properties."""
        properties = {}
        if self.endpoint_url:
            properties["s3.endpoint"] = self.endpoint_url
        if self.region:
            properties["s3.region"] = self.region
        return properties
