"""The ``raymail`` command: ``up``, ``user add``, ``domain add``, ``storage stats|query|gc``, ``queue``, ``reindex``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time

from raymail import config as config_mod
from raymail.errors import ConfigError, RaymailError
from raymail.store.directory import Directory, DirectoryError


def _load(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    overrides = {"data_dir": getattr(args, "data_dir", None)}
    for key in ("http_port", "smtp_port", "submission_port", "address"):
        overrides[key] = getattr(args, key, None)
    return cfg.with_overrides(**overrides)


def cmd_up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _load(args)
    import ray

    from cluster.deploy import Deployment, init_ray

    init_ray(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    dep = Deployment(cfg).start()
    host = cfg.server.bind
    base = f"http://{host}:{dep.port}"
    print(f"raymail is up (data in {cfg.data_path})", flush=True)
    print(f"  HTTP API      {base}/v1/  (docs: {base}/docs)", flush=True)
    print(f"  WebSocket     ws://{host}:{dep.port}/v1/connect", flush=True)
    print(f"  SMTP MX       {host}:{dep.smtp_port}   submission {host}:{dep.submission_port} (STARTTLS + AUTH)",
          flush=True)
    if cfg.outbound.pools:
        pools = "; ".join(f"{p.name} {', '.join(p.ips)}" for p in cfg.outbound.pools)
        print(f"  Outbound      pools: {pools}  (raymail queue shows what waits)", flush=True)
    if not cfg.cluster.address and cfg.cluster.dashboard:
        print(f"  Ray dashboard http://127.0.0.1:{cfg.cluster.dashboard_port}", flush=True)
    print(f"  create a user: raymail user add alice@example.test --data-dir {cfg.data_path}", flush=True)
    print("Ctrl-C stops it.", flush=True)
    while not stop.wait(5.0):
        try:
            dep.check()
        except Exception as exc:  # noqa: BLE001 - keep supervising
            logging.getLogger("raymail").warning("health check: %s", exc)
    print("raymail: shutting down", flush=True)
    dep.stop()
    ray.shutdown()
    print("raymail: stopped", flush=True)
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    cfg = _load(args)
    directory = Directory(cfg.data_path)
    try:
        user, token = directory.add_user(args.email, name=args.name or "", profile_url=args.profile_url or "")
    except DirectoryError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"uid": user.uid, "email": user.email, "token": token, "name": user.name}))
    return 0


def cmd_domain_add(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from raymail.outbound import dkim

    try:
        domain = Directory(cfg.data_path).add_domain(args.domain)
    except DirectoryError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return 1
    # Outbound mail from the domain is signed with this key once its TXT record is published.
    key = dkim.create_key(cfg.data_path, domain)
    name, value = key.txt_record()
    print(json.dumps({"domain": domain, "dkim": {"selector": key.selector, "txt_name": name, "txt_value": value}}))
    print(f"publish for DKIM: {name}. IN TXT \"{value}\"", file=sys.stderr)
    return 0


def cmd_domain_list(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps({"domains": Directory(cfg.data_path).domains()}))
    return 0


def cmd_storage_stats(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from pipelines.catalog import format_stats, storage_stats

    try:
        stats = storage_stats(cfg)
    except RaymailError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats) if args.json else format_stats(stats))
    return 0


def cmd_storage_query(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from pipelines.catalog import MAX_QUERY_ROWS, query

    try:
        columns, rows = query(cfg, args.sql)
    except ValueError as exc:
        print(f"raymail: the query failed: {exc}", file=sys.stderr)
        return 2
    except RaymailError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return 1
    if len(rows) > MAX_QUERY_ROWS:
        rows = rows[:MAX_QUERY_ROWS]
        print(f"raymail: only the first {MAX_QUERY_ROWS} rows are shown; aggregate, or add a LIMIT", file=sys.stderr)
    if args.json:
        print(json.dumps([dict(zip(columns, row)) for row in rows], default=str))
        return 0
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def _join(cfg: config_mod.Config) -> bool:
    """Join the running Ray cluster of this raymail; says why on stderr when it cannot."""
    import ray

    try:
        ray.init(address=cfg.cluster.address or "auto", namespace=cfg.cluster.namespace,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        print(f"raymail: cannot join the Ray cluster: {exc}", file=sys.stderr)
        return False
    return True


def cmd_storage_gc(args: argparse.Namespace) -> int:
    cfg = _load(args)
    import ray

    from pipelines.gc import collect, referenced_keys
    from raymail.store.blobs import BlobStore

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)  # stdout carries only the JSON summary

    least = 2 * BlobStore.refresh_after_s
    if not math.isfinite(args.grace_s) or args.grace_s < least:
        # An upload of bytes stored less than refresh_after_s ago re-uses the blob
        # without renewing its age; a shorter grace period could remove it before
        # the upload is recorded.
        print(f"raymail: --grace-s must be at least {least:g} seconds, got {args.grace_s:g}: an upload that "
              f"re-uses a blob stored within the last {BlobStore.refresh_after_s:g} seconds leaves its age "
              "as it was, and a shorter grace period could remove it before the upload is recorded",
              file=sys.stderr)
        return 2
    if not _join(cfg):
        return 1
    try:
        store = BlobStore(cfg.storage_url, cfg.storage.options)
        # References first, listing second: whatever is written in between is
        # younger than the listing and kept by the grace period.
        referenced = referenced_keys(cfg.cluster.namespace, cfg.cluster.shards)
        progress(f"gc: {len(referenced)} referenced blobs in {cfg.cluster.shards} shards")
        collected: list[dict] = []

        def deleted(key: str, size: int) -> None:
            if key.startswith("att/"):  # the catalog's blobs: its statistics must stop counting them
                collected.append({"blob": key, "sha256": key.rsplit("/", 1)[-1], "size": size, "ts": time.time()})

        summary = collect(
            store, referenced, args.grace_s, dry_run=args.dry_run, progress=progress,
            recheck=lambda: referenced_keys(cfg.cluster.namespace, cfg.cluster.shards), on_deleted=deleted,
        )
        summary["catalogued"] = _catalog_collected(store, collected, progress)
    except RaymailError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(json.dumps({**summary, "referenced": len(referenced)}))
    return 0


def _catalog_collected(store, rows: list[dict], progress) -> int:
    """Record the attachment blobs garbage collection removed in the catalog (one
    part of its ``collected`` table, written here: the catalog's actor need not be
    running); returns how many rows it took."""
    from actors.catalog import to_arrow, write_part

    if not rows:
        return 0
    try:
        write_part(store, "collected", to_arrow("collected", rows))
    except Exception as exc:  # noqa: BLE001 - the blobs are gone all the same; say what stats will miss
        progress(f"gc: could not record the {len(rows)} removed attachment blobs in the catalog ({exc}); "
                 "`raymail storage stats` will count them as stored")
        return 0
    progress(f"gc: recorded {len(rows)} removed attachment blobs in the catalog")
    return len(rows)


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild every shard's search index from the mailboxes and stored messages."""
    cfg = _load(args)
    import ray

    if not _join(cfg):
        return 1
    try:
        shards = [ray.get_actor(f"shard-{i}", namespace=cfg.cluster.namespace) for i in range(cfg.cluster.shards)]
    except ValueError as exc:
        print(f"raymail: no running raymail in namespace {cfg.cluster.namespace!r}: {exc}", file=sys.stderr)
        ray.shutdown()
        return 1
    pending = {s.reindex.remote(): i for i, s in enumerate(shards)}
    results = []
    print(f"reindexing {len(shards)} shards (progress in the shard logs)...", file=sys.stderr, flush=True)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        result = ray.get(done[0])
        print(f"shard {pending.pop(done[0])}: {result}", file=sys.stderr, flush=True)
        results.append(result)
    ray.shutdown()
    print(json.dumps({"shards": results, "messages": sum(r.get("messages", 0) for r in results)}))
    return 0


def _spool(cfg: config_mod.Config):
    import ray

    from actors.spool import SPOOL_NAME

    if not _join(cfg):
        return None
    try:
        return ray.get_actor(SPOOL_NAME, namespace=cfg.cluster.namespace)
    except ValueError:
        print(f"raymail: no outbound spool runs in namespace {cfg.cluster.namespace!r} "
              "(is raymail up, with [[outbound.pools]] configured?)", file=sys.stderr)
        ray.shutdown()
        return None


def format_queue(summary: dict, dead: list[dict]) -> str:
    lines = [f"{'pool':<16} {'domain':<32} {'queued':>7} {'sending':>8} {'deferred':>9} {'dead':>6}"]
    for pool, domains in sorted(summary["pools"].items()):
        for domain, c in sorted(domains.items()):
            lines.append(f"{pool:<16} {domain:<32} {c.get('queued', 0):>7} {c.get('sending', 0):>8} "
                         f"{c.get('deferred', 0):>9} {c.get('dead', 0):>6}")
    if len(lines) == 1:
        lines.append("(nothing waiting)")
    quotas = ", ".join(f"{ip}: {'no cap' if left is None else left}"
                       for ip, left in sorted(summary["quota_left_today"].items()))
    lines.append(f"warm-up quota left today: {quotas}")
    for d in dead:
        lines.append(f"dead {d['id']} <{d['recipient']}> from {d['sender']}: {d['text']}")
    return "\n".join(lines)


def cmd_queue(args: argparse.Namespace) -> int:
    """What waits for delivery elsewhere, per pool and destination domain; dead letters."""
    cfg = _load(args)
    import ray

    spool = _spool(cfg)
    if spool is None:
        return 1
    try:
        if args.action == "retry":
            print(json.dumps({"requeued": ray.get(spool.retry_dead.remote(args.id or ""))}))
            return 0
        if args.action == "unsuppress":
            print(json.dumps({"removed": ray.get(spool.unsuppress.remote(args.email, args.uid or ""))}))
            return 0
        summary, dead = ray.get([spool.summary.remote(), spool.dead.remote()])
    finally:
        ray.shutdown()
    print(json.dumps({**summary, "dead": dead}) if args.json else format_queue(summary, dead))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raymail", description="An email platform on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="TOML file (default: the embedded configs/default.toml)")
        sp.add_argument("--data-dir", help="where mailboxes, the directory and blobs live")

    up = sub.add_parser("up", help="run the server until Ctrl-C / SIGTERM")
    common(up)
    up.add_argument("--http-port", type=int)
    up.add_argument("--smtp-port", type=int)
    up.add_argument("--submission-port", type=int)
    up.add_argument("--address", help="Ray address to join ('auto' for a running cluster)")
    up.set_defaults(func=cmd_up)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    ua = user.add_parser("add", help="create a user; prints its uid and token")
    ua.add_argument("email")
    ua.add_argument("--name")
    ua.add_argument("--profile-url")
    common(ua)
    ua.set_defaults(func=cmd_user_add)

    domain = sub.add_parser("domain", help="manage local domains").add_subparsers(dest="action", required=True)
    da = domain.add_parser("add", help="mail for this domain is delivered here")
    da.add_argument("domain")
    common(da)
    da.set_defaults(func=cmd_domain_add)
    dl = domain.add_parser("list", help="list local domains")
    common(dl)
    dl.set_defaults(func=cmd_domain_list)

    storage = sub.add_parser("storage", help="blob storage: statistics, garbage collection").add_subparsers(
        dest="action", required=True)
    st = storage.add_parser("stats", help="attachment storage statistics from the catalog")
    common(st)
    st.add_argument("--json", action="store_true", help="print JSON instead of a report")
    st.set_defaults(func=cmd_storage_stats)
    sq = storage.add_parser("query", help="run a DuckDB SQL query over the catalog's tables")
    common(sq)
    sq.add_argument("sql", help="e.g. \"SELECT content_type, count(*) FROM blobs GROUP BY 1\" (tables: blobs, refs, "
                    "expired, collected, events)")
    sq.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    sq.set_defaults(func=cmd_storage_query)
    gc = storage.add_parser("gc", help="delete blobs no mailbox references (joins the running cluster)")
    common(gc)
    gc.add_argument("--grace-s", type=float, default=86400.0,
                    help="keep unreferenced objects younger than this (default: one day; at least 120)")
    gc.add_argument("--dry-run", action="store_true", help="report what would be deleted; delete nothing")
    gc.add_argument("--address", help="Ray address of the running cluster (default: [cluster] address or 'auto')")
    gc.set_defaults(func=cmd_storage_gc)

    q = sub.add_parser("queue", help="outbound mail: queued, deferred and dead, per pool and domain")
    common(q)
    q.add_argument("--address", help="Ray address of the running cluster (default: [cluster] address or 'auto')")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=cmd_queue, action="show")
    qsub = q.add_subparsers(dest="action")
    qr = qsub.add_parser("retry", help="send dead letters back to the queue")
    qr.add_argument("id", nargs="?", help="one outbound message id (default: every dead letter)")
    common(qr)
    qr.add_argument("--address")
    qr.set_defaults(func=cmd_queue, json=False)
    qu = qsub.add_parser("unsuppress", help="remove an address from the suppression list")
    qu.add_argument("email", metavar="ADDRESS")
    qu.add_argument("--uid", help="only for this sender account (default: every scope)")
    common(qu)
    qu.add_argument("--address")
    qu.set_defaults(func=cmd_queue, json=False)

    ri = sub.add_parser("reindex", help="rebuild the search indexes (joins the running cluster)")
    common(ri)
    ri.add_argument("--address", help="Ray address of the running cluster (default: [cluster] address or 'auto')")
    ri.set_defaults(func=cmd_reindex)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"raymail: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
