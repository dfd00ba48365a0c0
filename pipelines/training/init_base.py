"""``init-base``: build a preset base (tokenizer trained on the archive's ticket text)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from pipelines.contract.archive import Archive
from pipelines.contract.rows import split_valid_rows
from pipelines.contract.storage import ObjectStore
from pipelines.contract.text import TextBuilder
from pipelines.errors import ArchiveError
from pipelines.model.base import build_preset_base

log = logging.getLogger(__name__)


def sample_ticket_texts(
    archive_uri: str, builder: TextBuilder, max_texts: int, store: ObjectStore | None = None
) -> Iterator[str]:
    """Model texts of valid tickets spread evenly over the archive's days, at most ``max_texts``."""
    archive = Archive(archive_uri, store)
    files = [path for partition in archive.partitions() for path in partition.files]
    if not files:
        raise ArchiveError(f"archive {archive_uri} holds no date=YYYY-MM-DD/*.parquet files")
    per_file = max(1, max_texts // len(files))
    for path in files:
        valid, _ = split_valid_rows(archive.read_file(path).to_pandas())
        if len(valid) > per_file:
            valid = valid.sample(per_file, random_state=0)
        yield from builder.build_many(valid)


def init_base(
    preset: str,
    archive_uri: str,
    out: Path,
    builder: TextBuilder,
    *,
    vocab_size: int,
    max_length: int,
    max_texts: int = 100_000,
    seed: int = 0,
    overwrite: bool = False,
    store: ObjectStore | None = None,
) -> Path:
    log.info(
        "training a %d-token BPE tokenizer on up to %d tickets of %s", vocab_size, max_texts, archive_uri
    )
    texts = sample_ticket_texts(archive_uri, builder, max_texts, store)
    return build_preset_base(
        preset, texts, out, vocab_size=vocab_size, max_length=max_length, seed=seed, overwrite=overwrite
    )
