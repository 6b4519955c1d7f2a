"""raymail/store/log.py: the durable log (group commit, snapshots, recovery)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from raymail.errors import StorageError
from raymail.store.log import DurableLog, frame, read_frames


def segs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("seg-"))


def snaps(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("snap-"))


def reopen(path: Path, old: DurableLog | None = None):
    if old is not None:
        old.close()
    log = DurableLog(path)
    return log, log.recover()


# -- framing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, records, valid",
    [
        (b"", [], 0),
        (frame(b"a") + frame(b"bc"), [b"a", b"bc"], 9 + 10),
        (frame(b"a") + frame(b"bc")[:-1], [b"a"], 9),  # torn payload
        (frame(b"a") + frame(b"bc")[:5], [b"a"], 9),  # torn header
        (frame(b"a") + b"\xff" * 3 + frame(b"b"), [b"a"], 9),  # garbage stops the scan
        (frame(b"abc")[:8] + b"abd", [], 0),  # crc mismatch
    ],
    ids=["empty", "two", "torn-payload", "torn-header", "garbage", "bad-crc"],
)
def test_read_frames(data, records, valid):
    assert read_frames(data) == (records, valid)


# -- append and recover -----------------------------------------------------------


async def test_fresh_directory_recovers_empty(tmp_path: Path):
    log, rec = reopen(tmp_path / "log")
    assert (rec.snapshot, rec.records, rec.truncated_bytes) == (None, [], 0)
    assert segs(tmp_path / "log") == ["seg-00000000.wal"]
    log.close()


async def test_append_then_recover_in_a_new_instance(tmp_path: Path):
    log, _ = reopen(tmp_path)
    payloads = [b"first", b"\x00\x01binary", "ünïcode".encode(), b"x" * 100_000]
    for p in payloads:
        await log.append(p)
    assert log.bytes_since_snapshot == sum(len(p) + 8 for p in payloads)
    log2, rec = reopen(tmp_path, log)
    assert rec.records == payloads
    assert rec.snapshot is None and rec.truncated_bytes == 0
    assert log2.bytes_since_snapshot == sum(len(p) + 8 for p in payloads)
    # and it keeps appending after the recovered records
    await log2.append(b"after")
    log3, rec = reopen(tmp_path, log2)
    assert rec.records == payloads + [b"after"]
    log3.close()


async def test_concurrent_appends_are_all_recovered_in_order(tmp_path: Path):
    log, _ = reopen(tmp_path)
    payloads = [f"rec-{i:03d}".encode() for i in range(100)]
    results = await asyncio.gather(*(log.append(p) for p in payloads))
    assert results == [None] * 100
    await log.wait_durable()
    assert (tmp_path / "seg-00000000.wal").stat().st_size == sum(len(p) + 8 for p in payloads)
    _, rec = reopen(tmp_path, log)
    assert rec.records == payloads


async def test_wait_durable_when_idle_returns(tmp_path: Path):
    log, _ = reopen(tmp_path)
    await asyncio.wait_for(log.wait_durable(), 5)
    log.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data + b"\x7f\x12garbage-after-a-crash",
        lambda data: data[:-3],  # the last frame lost its tail
        lambda data: data[:-12],  # the last frame lost more than its payload
        lambda data: data[:-4] + b"XXXX",  # the last frame's payload is wrong (crc)
    ],
    ids=["garbage", "short-payload", "short-header", "bad-crc"],
)
async def test_torn_tail_is_truncated_and_later_appends_recover(tmp_path: Path, damage):
    log, _ = reopen(tmp_path)
    for p in (b"one", b"two", b"three-bytes"):
        await log.append(p)
    log.close()
    seg = tmp_path / "seg-00000000.wal"
    good = seg.read_bytes()
    seg.write_bytes(damage(good))
    log, rec = reopen(tmp_path)
    expect = [b"one", b"two", b"three-bytes"] if len(damage(good)) > len(good) else [b"one", b"two"]
    assert rec.records == expect
    assert rec.truncated_bytes == len(damage(good)) - sum(len(r) + 8 for r in expect)
    assert seg.stat().st_size == sum(len(r) + 8 for r in expect)
    await log.append(b"four")
    await log.append(b"five")
    log, rec = reopen(tmp_path, log)
    assert rec.records == expect + [b"four", b"five"]
    assert rec.truncated_bytes == 0
    log.close()


async def test_zero_filled_tail_is_truncated(tmp_path: Path):
    log, _ = reopen(tmp_path)
    await log.append(b"one")
    log.close()
    seg = tmp_path / "seg-00000000.wal"
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 4096)
    log, rec = reopen(tmp_path)
    assert rec.records == [b"one"]
    assert rec.truncated_bytes == 4096
    log.close()


# -- snapshots -----------------------------------------------------------------


async def test_snapshot_replaces_older_segments(tmp_path: Path):
    log, _ = reopen(tmp_path)
    for p in (b"a", b"b", b"c"):
        await log.append(p)
    await log.snapshot(lambda: b"STATE-abc")
    assert log.bytes_since_snapshot == 0
    assert segs(tmp_path) == ["seg-00000001.wal"]
    assert snaps(tmp_path) == ["snap-00000001.bin"]
    await log.append(b"d")
    await log.append(b"e")
    log, rec = reopen(tmp_path, log)
    assert rec.snapshot == b"STATE-abc"
    assert rec.records == [b"d", b"e"]
    assert log.bytes_since_snapshot == 2 * 9
    # a second snapshot, after recovery, supersedes the first
    await log.append(b"f")
    await log.snapshot(lambda: b"STATE-abcdef")
    await log.append(b"g")
    assert segs(tmp_path) == ["seg-00000002.wal"]
    assert snaps(tmp_path) == ["snap-00000002.bin"]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    log, rec = reopen(tmp_path, log)
    assert (rec.snapshot, rec.records) == (b"STATE-abcdef", [b"g"])
    log.close()


async def test_snapshot_orders_with_concurrent_appends(tmp_path: Path):
    log, _ = reopen(tmp_path)
    state: list[bytes] = []

    async def add(p: bytes):
        state.append(p)  # apply then enqueue with no await in between, as the shard does
        await log.append(p)

    # 20 appends are queued (and the first batch is in flight), then the snapshot
    # captures the state, then 20 more appends arrive while all of that is pending.
    t_before = [asyncio.ensure_future(add(f"b{i}".encode())) for i in range(20)]
    await asyncio.sleep(0)
    t_snap = asyncio.ensure_future(log.snapshot(lambda: b",".join(state)))
    await asyncio.sleep(0)
    t_after = [asyncio.ensure_future(add(f"a{i}".encode())) for i in range(20)]
    await asyncio.gather(*t_before, t_snap, *t_after)
    log, rec = reopen(tmp_path, log)
    assert rec.snapshot == b",".join(f"b{i}".encode() for i in range(20))
    assert rec.records == [f"a{i}".encode() for i in range(20)]
    log.close()


async def _two_snapshot_crash_layout(path: Path) -> None:
    """A crash right after snap-2 was renamed into place, before snap-1 and seg-1 were unlinked."""
    log, _ = reopen(path)
    await log.append(b"r0")
    await log.snapshot(lambda: b"S1")  # snap-1 covers r0
    await log.append(b"r1")
    log.close()
    keep = path.parent / "keep"
    keep.mkdir()
    shutil.copy(path / "snap-00000001.bin", keep)
    shutil.copy(path / "seg-00000001.wal", keep)
    log, _ = reopen(path)
    await log.snapshot(lambda: b"S2")  # snap-2 covers r0, r1
    await log.append(b"r2")
    log.close()
    for p in keep.iterdir():
        shutil.copy(p, path / p.name)
    assert snaps(path) == ["snap-00000001.bin", "snap-00000002.bin"]
    assert segs(path) == ["seg-00000001.wal", "seg-00000002.wal"]


async def test_recover_prefers_the_newest_snapshot(tmp_path: Path):
    path = tmp_path / "log"
    await _two_snapshot_crash_layout(path)
    log, rec = reopen(path)
    assert (rec.snapshot, rec.records) == (b"S2", [b"r2"])
    assert segs(path) == ["seg-00000002.wal"]  # the covered segment is dropped
    log.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],  # torn snapshot frame
        lambda data: b"NOTMAGIC" + data[8:],
        lambda data: data[:-2] + b"zz",  # crc mismatch
        lambda data: b"",
    ],
    ids=["torn", "bad-magic", "bad-crc", "empty"],
)
async def test_damaged_newest_snapshot_falls_back_to_the_previous_one(tmp_path: Path, damage):
    path = tmp_path / "log"
    await _two_snapshot_crash_layout(path)
    snap2 = path / "snap-00000002.bin"
    snap2.write_bytes(damage(snap2.read_bytes()))
    log, rec = reopen(path)
    # snap-1 plus every segment from 1 on: the same state snap-2 + seg-2 would give
    assert (rec.snapshot, rec.records) == (b"S1", [b"r1", b"r2"])
    await log.append(b"r3")  # appends go to the newest segment
    log, rec = reopen(path, log)
    assert (rec.snapshot, rec.records) == (b"S1", [b"r1", b"r2", b"r3"])
    log.close()


async def test_damaged_only_snapshot_is_ignored_not_fatal(tmp_path: Path):
    # What is guaranteed: a damaged snapshot is skipped (logged), never an exception.
    # With no older snapshot left, only the segments after it remain to replay.
    log, _ = reopen(tmp_path)
    await log.append(b"r0")
    await log.snapshot(lambda: b"S1")
    await log.append(b"r1")
    log.close()
    snap = tmp_path / "snap-00000001.bin"
    snap.write_bytes(snap.read_bytes()[:-1])
    log, rec = reopen(tmp_path)
    assert (rec.snapshot, rec.records) == (None, [b"r1"])
    log.close()


# -- failure -------------------------------------------------------------------


async def test_a_write_failure_breaks_the_log_for_good(tmp_path: Path):
    log = DurableLog(tmp_path)  # recover() was never called: there is no open segment
    with pytest.raises(StorageError, match="write failed"):
        await log.append(b"x")
    with pytest.raises(StorageError, match="unusable"):
        await log.append(b"y")
    with pytest.raises(StorageError, match="unusable"):
        await log.snapshot(lambda: b"s")
    assert os.listdir(tmp_path) == []  # nothing was written
