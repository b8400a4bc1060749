"""The content-addressed artifact folder."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from quidditch_pipeline.errors import NotFoundError
from quidditch_pipeline.udf import ArtifactStore

DATA = b"\0asm\x0d\x00\x01\x00" + b"component bytes" * 100


def test_put_names_the_file_by_its_sha256_and_reads_it_back(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha = store.put(DATA)
    assert sha == hashlib.sha256(DATA).hexdigest()
    assert store.path(sha) == tmp_path / "artifacts" / f"{sha}.wasm"
    assert store.has(sha)
    assert store.read(sha) == DATA


def test_put_is_idempotent_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.put(DATA) == store.put(DATA)
    assert [p.name for p in tmp_path.iterdir()] == [f"{hashlib.sha256(DATA).hexdigest()}.wasm"]


def test_concurrent_puts_of_the_same_bytes_agree(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    shas: list[str] = []
    threads = [threading.Thread(target=lambda: shas.append(store.put(DATA))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(shas)) == 1
    assert store.read(shas[0]) == DATA
    assert len(list(tmp_path.iterdir())) == 1


def test_delete_is_idempotent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    sha = store.put(DATA)
    store.delete(sha)
    assert not store.has(sha)
    store.delete(sha)


def test_reading_a_missing_artifact_is_not_found(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(NotFoundError):
        store.read("0" * 64)


@pytest.mark.parametrize("bad", ["", "abc", "../" + "0" * 61, "G" * 64, "0" * 63])
def test_names_that_are_not_sha256_digests_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        ArtifactStore(tmp_path).path(bad)
