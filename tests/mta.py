"""A real Postfix instance in a temporary directory, as a peer for SMTP tests and benchmarks.

Each instance has its own configuration directory (main.cf and master.cf written
here), queue directory, data directory, log file and maildir base under one fresh
directory, and listens on 127.0.0.1 only, so several can run side by side and
nothing under /etc/postfix or /var/spool/postfix is read or changed. No DNS is
used: next hops are bracketed addresses.

What an instance does with mail is given when it is made (any combination):
- ``relay``: domain -> (host, port). Mail for these domains is accepted from
  anyone (``relay_domains``) and handed to that host (``transport_maps``), with
  STARTTLS when the peer offers it (``smtp_tls_security_level = may``).
  ``Postfix.relay_domains(...)`` sends a list of domains to one host.
- ``relayhost``: (host, port). Everything else that loopback clients send
  (``mynetworks``) goes there: a smart host.
- ``mailboxes``: domain -> local parts, delivered by virtual(8) into maildirs
  with Postfix's normal durability (nothing about fsync is changed).

Needs root and the distribution's postfix package: the master starts as root and
its daemons drop to ``mail_owner`` (the ``postfix`` user); the queue directories
are made by ``postfix check`` (post-install create-missing) with the owners and
modes Postfix expects. Use it as a context manager, or call ``stop()``; whatever
is still running when the interpreter exits is stopped then, and an instance left
by a process that was killed outright is stopped by the next ``start()``.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
_OWNER = "owner.pid"  # the process that started an instance; see reap_orphans()
Hostport = tuple[str, int]

# The services a small instance needs; no chroot, so no copies of /etc files are needed.
_MASTER_CF = """\
{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

_running: set[Postfix] = set()


class PostfixError(RuntimeError):
    """Postfix is missing, misconfigured, or did not do what was waited for."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_postfix() -> None:
    """Raise with what to install when Postfix cannot be run here."""
    if not Path(POSTFIX).exists():
        raise PostfixError(f"{POSTFIX} not found: install the postfix package (`make system-deps`)")
    if os.geteuid() != 0:
        raise PostfixError("running Postfix needs root: its master starts as root and drops privileges")
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError as exc:
        raise PostfixError("the postfix user or postdrop group is missing: reinstall the postfix package") from exc


def _inline(table: Mapping[str, str]) -> str:
    return "inline:{ " + ", ".join(f"{k}={v}" for k, v in table.items()) + " }"


class Postfix:
    """One Postfix instance listening on 127.0.0.1:``port``; see the module docstring
    for ``relay``, ``relayhost`` and ``mailboxes``. ``settings`` are extra main.cf
    parameters, written last so they override the ones made here."""

    def __init__(self, port: int, *, relay: Mapping[str, Hostport] | None = None,
                 relayhost: Hostport | None = None, mailboxes: Mapping[str, Iterable[str]] | None = None,
                 hostname: str = "postfix.test", settings: Mapping[str, str] | None = None) -> None:
        require_postfix()
        self.port = port
        self.relay = dict(relay or {})
        self.relayhost = relayhost
        self.mailboxes = {d: list(parts) for d, parts in (mailboxes or {}).items()}
        self.hostname = hostname
        self.settings = dict(settings or {})
        # mkdtemp under /tmp, not a caller's private temp dir: the unprivileged daemons
        # and the maildir owner must be able to reach every path component.
        self.root = Path(tempfile.mkdtemp(prefix="postfix-"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.mail_dir = self.root / "mail"
        self.log_file = self.root / "maillog"
        self.master_pid: int | None = None

    @classmethod
    def relay_domains(cls, port: int, domains: Iterable[str], nexthop: Hostport, **kwargs) -> Postfix:
        """An instance that relays all mail for ``domains`` to ``nexthop``."""
        return cls(port, relay={d: nexthop for d in domains}, **kwargs)

    def main_cf(self) -> dict[str, str]:
        nobody = pwd.getpwnam("nobody")  # maildir owner: virtual(8) refuses root
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": self.hostname,
            "mydomain": self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 no local delivery on this host",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "smtpd_peername_lookup": "no",  # loopback clients; no reverse DNS
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "may",
            "smtp_tls_loglevel": "1",  # logs "... TLS connection established to ..."
            "relay_domains": ", ".join(self.relay),
            "transport_maps": _inline({d: f"smtp:[{h}]:{p}" for d, (h, p) in self.relay.items()}) if self.relay else "",
            "relayhost": f"[{self.relayhost[0]}]:{self.relayhost[1]}" if self.relayhost else "",
            "virtual_mailbox_domains": ", ".join(self.mailboxes),
            "virtual_mailbox_base": str(self.mail_dir),
            # A trailing slash makes virtual(8) write a maildir.
            "virtual_mailbox_maps": _inline({f"{lp}@{d}": f"{d}/{lp}/" for d, lps in self.mailboxes.items()
                                              for lp in lps}) if self.mailboxes else "",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
        }
        cf.update(self.settings)
        return cf

    def start(self) -> Postfix:
        reap_orphans()
        _running.add(self)
        (self.root / _OWNER).write_text(str(os.getpid()))
        try:
            self._configure()
            # check creates the queue directories (owners and modes from postfix-files)
            # and fails loudly on a configuration error; start returns once the master runs.
            self._postfix("check")
            self._postfix("start")
            self.master_pid = self._read_pid()
            self._wait_listening(10.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _configure(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.mail_dir):
            d.mkdir(mode=0o755)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(port=f"127.0.0.1:{self.port}"))

    def _read_pid(self) -> int | None:
        return _master_pid(self.root)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the master and its daemons, waiting until they are gone; then remove the files."""
        if self in _running:
            _running.discard(self)
            _stop(self.root, self.master_pid, timeout_s)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queue_size(self) -> int:
        """Messages Postfix still holds (received, active, deferred, held)."""
        return sum(1 for q in ("maildrop", "incoming", "active", "deferred", "hold")
                   for p in (self.queue_dir / q).rglob("*") if p.is_file())

    def wait_queue_empty(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (n := self.queue_size()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if n:
            raise PostfixError(f"Postfix still holds {n} message(s) after {timeout_s} s; log:\n{self.log_tail()}")

    def maildir(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.mail_dir / domain / local

    def delivered(self, address: str) -> list[Path]:
        """The message files in ``address``'s maildir (new/ and cur/)."""
        box = self.maildir(address)
        return [p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir()]

    def count_delivered(self, address: str) -> int:
        box = self.maildir(address)
        return sum(len(os.listdir(box / sub)) for sub in ("new", "cur") if (box / sub).is_dir())

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _postfix(self, command: str, timeout_s: float = 60.0) -> None:
        try:
            _postfix_command(self.root, command, timeout_s)
        except PostfixError as exc:
            raise PostfixError(f"{exc}\n{self.log_tail()}") from None

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PostfixError(f"Postfix is not answering on 127.0.0.1:{self.port}; log:\n{self.log_tail()}")
            time.sleep(0.1)


def _postfix_command(root: Path, command: str, timeout_s: float) -> None:
    try:
        out = subprocess.run([POSTFIX, "-c", str(root / "etc"), command], capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"postfix {command} did not finish in {timeout_s} s") from exc
    if out.returncode != 0:
        raise PostfixError(f"postfix {command} failed ({out.returncode}): {out.stderr.strip()}")


def _master_pid(root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((root / "spool" / "pid" / "master.pid").read_text().split()[0])
    return None


def _stop(root: Path, pid: int | None, timeout_s: float) -> None:
    """``postfix stop``, then wait for the master to exit; past the timeout, kill its
    process group (the master leads one, its daemons are in it)."""
    pid = pid or _master_pid(root)
    if pid is None:
        return
    with contextlib.suppress(PostfixError):
        _postfix_command(root, "stop", timeout_s)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid) and _comm(pid) == "master":  # not a recycled pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def reap_orphans() -> None:
    """Stop and remove instances whose owning process died without stopping them (a
    test run killed with SIGKILL); instances of live processes are left alone."""
    for owner in Path(tempfile.gettempdir()).glob("postfix-*/" + _OWNER):
        with contextlib.suppress(OSError, ValueError):
            if _alive(int(owner.read_text())):
                continue
            _stop(owner.parent, None, 15.0)
            shutil.rmtree(owner.parent, ignore_errors=True)


@atexit.register
def _stop_all() -> None:
    for instance in list(_running):
        instance.stop()
