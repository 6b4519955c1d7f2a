"""The ``raymail`` command: ``up``, ``user add``, ``domain add``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from raymail import config as config_mod
from raymail.errors import ConfigError
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
    try:
        domain = Directory(cfg.data_path).add_domain(args.domain)
    except DirectoryError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"domain": domain}))
    return 0


def cmd_domain_list(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps({"domains": Directory(cfg.data_path).domains()}))
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
