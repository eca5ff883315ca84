"""The content-addressed blob store: layout, idempotence, atomicity, integrity."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from frontdesk.errors import TransientError
from ingest.blobs import BlobError, BlobNotFound, BlobStore, BlobWriteFailed, blob_ref

DATA = b"%PDF-1.4 statement \x00\xff"
HEX = hashlib.sha256(DATA).hexdigest()


def test_put_returns_sha256_reference_and_lays_out_by_prefix(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    ref = store.put(DATA)
    assert ref == f"sha256:{HEX}" == blob_ref(DATA)
    assert store.path(ref) == tmp_path / "blobs" / HEX[:2] / HEX[2:4] / HEX
    assert store.path(ref).read_bytes() == DATA
    assert store.get(ref) == DATA
    assert store.exists(ref)


def test_put_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    before = store.path(ref).stat()
    assert store.put(DATA) == ref
    after = store.path(ref).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert [p.name for p in store.path(ref).parent.iterdir()] == [HEX]


def test_empty_blob_is_a_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.get(store.put(b"")) == b""


def test_crash_before_rename_leaves_nothing_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def killed(src: str, dst: str) -> None:
        raise OSError("killed before rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(BlobWriteFailed) as caught:
        store.put(DATA)
    assert isinstance(caught.value, TransientError)
    assert not store.exists(blob_ref(DATA))
    assert list(store.path(blob_ref(DATA)).parent.iterdir()) == []  # the temp file is gone too


def test_failed_flush_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(BlobWriteFailed, match="No space left"):
        store.put(DATA)
    assert list(store.path(blob_ref(DATA)).parent.iterdir()) == []


def test_unwritable_root_is_a_transient_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(BlobWriteFailed):
        BlobStore(blocker).put(DATA)


def test_concurrent_writers_of_the_same_bytes_agree(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    payload = os.urandom(256 * 1024)
    refs: list[str] = []
    threads = [threading.Thread(target=lambda: refs.append(store.put(payload))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(refs)) == 1
    assert store.get(refs[0]) == payload
    assert [p.name for p in store.path(refs[0]).parent.iterdir()] == [refs[0].removeprefix("sha256:")]


def test_get_missing_blob(tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound):
        BlobStore(tmp_path).get(blob_ref(b"never stored"))


def test_get_detects_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.put(DATA)
    store.path(ref).write_bytes(b"tampered")
    with pytest.raises(BlobError, match="corrupt"):
        store.get(ref)


@pytest.mark.parametrize("ref", ["", "sha256:", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:../../etc/passwd"])
def test_malformed_references_are_refused(tmp_path: Path, ref: str) -> None:
    with pytest.raises(BlobError, match="not a blob reference"):
        BlobStore(tmp_path).path(ref)
