"""Blob garbage collection: delete stored objects that no mailbox references.

Safety rules, in order:
- a key in ``referenced`` is never deleted (also under ``tmp/``);
- only ``msg/``, ``att/`` and ``tmp/`` are listed; ``catalog/`` and anything else
  in the bucket are never touched;
- an object is deleted only when its modification time is older than
  ``now - grace_s``, checked once when listed and again just before deleting.
  The grace period covers what the reference set cannot see: a blob written
  and not yet recorded by its mailbox (an upload or a send in flight) and
  writer temporaries (``tmp/`` and local ``.<name>.tmp`` files);
- on an object store, a multipart upload left unfinished (by a process stopped
  mid-upload) is aborted once nothing has come to it for longer than the grace
  period (no part since its latest, or since it began): its parts take space and
  never become an object.

``referenced`` must be gathered *before* ``collect`` lists storage, so anything
written after the gathering is younger than the listing and kept by the grace
period. ``recheck`` (optional) gathers the references again after the listing
and keeps whatever they name, which narrows the window in which a blob that was
orphaned and is being re-used by a new upload of the same bytes could go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from raymail.errors import RaymailError, StorageError
from raymail.store.blobs import BlobStore, mtime_of  # the store's reading of fsspec's mtime fields

log = logging.getLogger(__name__)

PREFIXES = ("msg/", "att/", "tmp/")
PROGRESS_EVERY = 1000


class GcAborted(RaymailError):
    """The reference set could not be gathered completely; nothing was deleted."""


def collect(
    store: BlobStore,
    referenced: set[str],
    grace_s: float,
    now_s: float | None = None,
    dry_run: bool = False,
    progress: Callable[[str], object] = print,
    recheck: Callable[[], set[str]] | None = None,
    on_deleted: Callable[[str, int], object] | None = None,
) -> dict:
    """Delete unreferenced objects older than the grace period; returns counts and bytes.
    ``on_deleted(key, size)`` is told of each object deleted."""
    if not grace_s >= 0:  # NaN too: every cutoff comparison with it is false
        raise ValueError(f"grace_s must be a number of seconds, not negative, got {grace_s}")
    now = time.time() if now_s is None else now_s
    cutoff_s = now - grace_s
    out = {name: 0 for name in (
        "scanned", "scanned_bytes", "kept", "kept_bytes", "skipped_young", "skipped_young_bytes",
        "deleted", "deleted_bytes", "errors", "unfinished_uploads", "aborted_uploads",
    )}
    candidates: list[tuple[str, int]] = []
    for prefix in PREFIXES:
        for key, size, mtime_s in store.list(prefix):
            out["scanned"] += 1
            out["scanned_bytes"] += size
            if key in referenced or not key.startswith(prefix):
                out["kept"] += 1
                out["kept_bytes"] += size
            elif mtime_s > cutoff_s:
                out["skipped_young"] += 1
                out["skipped_young_bytes"] += size
            else:
                candidates.append((key, size))
            if out["scanned"] % PROGRESS_EVERY == 0:
                progress(f"gc: scanned {out['scanned']} objects, {len(candidates)} to delete so far")
    if recheck is not None and candidates:
        again = recheck()
        still = [(k, s) for k, s in candidates if k not in again]
        out["kept"] += len(candidates) - len(still)
        out["kept_bytes"] += sum(s for k, s in candidates if k in again)
        candidates = still
    for i, (key, size) in enumerate(candidates, 1):
        if not dry_run:
            try:
                if _modified_since(store, key, cutoff_s):
                    out["skipped_young"] += 1
                    out["skipped_young_bytes"] += size
                    continue
                store.delete(key)
            except StorageError as exc:  # one bad object must not stop the sweep
                out["errors"] += 1
                log.warning("gc: could not delete %s: %s", key, exc)
                continue
            if on_deleted is not None:
                on_deleted(key, size)
        out["deleted"] += 1
        out["deleted_bytes"] += size
        if i % PROGRESS_EVERY == 0:
            progress(f"gc: {'would delete' if dry_run else 'deleted'} {i} of {len(candidates)} objects")
    _abort_unfinished_uploads(store, cutoff_s, dry_run, out)
    progress(
        f"gc: scanned {out['scanned']}, kept {out['kept']}, too young {out['skipped_young']}, "
        f"{'would delete' if dry_run else 'deleted'} {out['deleted']} ({out['deleted_bytes']} bytes), "
        f"{'would abort' if dry_run else 'aborted'} {out['aborted_uploads']} of {out['unfinished_uploads']} "
        f"unfinished multipart uploads, errors {out['errors']}"
    )
    return {**out, "dry_run": dry_run, "grace_s": grace_s, "cutoff_s": cutoff_s}


def _abort_unfinished_uploads(store: BlobStore, cutoff_s: float, dry_run: bool, out: dict) -> None:
    try:
        unfinished = store.unfinished_uploads()
    except StorageError as exc:
        out["errors"] += 1
        log.warning("gc: %s", exc)
        return
    out["unfinished_uploads"] = len(unfinished)
    for key, upload_id, active_s in unfinished:
        if active_s > cutoff_s or not key.startswith(PREFIXES):
            continue
        if not dry_run:
            try:
                store.abort_upload(key, upload_id)
            except StorageError as exc:
                out["errors"] += 1
                log.warning("gc: %s", exc)
                continue
        out["aborted_uploads"] += 1


def _modified_since(store: BlobStore, key: str, cutoff_s: float) -> bool:
    """True if ``key`` is gone or was rewritten after the cutoff (then it is not ours to delete)."""
    path = f"{store.root}/{key}"
    try:
        info = store.fs.info(path)
    except FileNotFoundError:
        return True
    except Exception as exc:  # noqa: BLE001 - mapped at the boundary
        raise StorageError(f"could not check blob {key}: {exc}") from exc
    return mtime_of(info) > cutoff_s


def referenced_keys(namespace: str, shards: int, timeout_s: float = 300.0) -> set[str]:
    """Every blob key the running shard actors reference. Raises GcAborted unless
    all ``shards`` answered and there is no shard beyond them (a wrong ``shards``
    count would otherwise hide references and delete live mail)."""
    import ray

    handles = []
    for i in range(shards):
        try:
            handles.append(ray.get_actor(f"shard-{i}", namespace=namespace))
        except ValueError:
            raise GcAborted(f"shard-{i} is not running in namespace {namespace!r}; nothing was deleted") from None
    try:
        ray.get_actor(f"shard-{shards}", namespace=namespace)
    except ValueError:
        pass
    else:
        raise GcAborted(
            f"shard-{shards} exists in namespace {namespace!r} but [cluster] shards = {shards}; "
            "pass the deployment's configuration; nothing was deleted"
        )
    try:
        answers = ray.get([h.blob_keys.remote() for h in handles], timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - Ray's errors are mapped here
        raise GcAborted(f"a shard did not report its references ({exc}); nothing was deleted") from exc
    keys: set[str] = set()
    for answer in answers:
        keys.update(answer)
    return keys
