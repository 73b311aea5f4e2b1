"""Privilege drop (`--user NAME`, TOML `[bridge] user = "NAME"`): once every socket is open, the bridge
becomes NAME with no supplementary groups and no capabilities (docs/deployment.md, "Privilege drop").

Nothing the bridge does after start-up needs a privilege: the listening, UDP and CAN_RAW sockets are
already open, TCP clients reconnect with ordinary sockets, and opening a CAN_RAW socket needs no
capability anyway (af_can.c checks none). What is lost: SO_RCVBUFFORCE/SO_SNDBUFFORCE (CAP_NET_ADMIN) on
sockets opened later (TCP connections accepted or re-made): they fall back to SO_RCVBUF/SO_SNDBUF,
capped by net.core.rmem_max/wmem_max; and binding a port below 1024 again (CAP_NET_BIND_SERVICE).
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

from bridge.errors import ConfigError

log = logging.getLogger(__name__)


def capabilities(status: str | None = None) -> dict[str, int]:
    """{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb": bitmask} of this process, from
    /proc/self/status (or the given text of a /proc/PID/status file)."""
    text = Path("/proc/self/status").read_text() if status is None else status
    caps = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            caps[key] = int(value.strip(), 16)
    return caps


def drop_privileges(user: str) -> str:
    """Become `user` (name or numeric uid) for good: setgroups([]), setresgid, setresuid, then check that
    real/effective/saved ids are the user's, no capability is left (CapPrm, CapEff, CapAmb all 0) and uid 0
    cannot be regained. Returns a one-line description (also logged). Raises ConfigError when the user
    does not exist, the process may not change ids (needs root or CAP_SETUID+CAP_SETGID), or a check fails.
    Already running as `user` (systemd User=/DynamicUser=): changes nothing but the checks still apply."""
    where = f"user {user!r}"
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"{where}: no such user") from None
    uid, gid = pw.pw_uid, pw.pw_gid
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # leaving uid 0 clears the permitted, effective and ambient sets
        except PermissionError:
            raise ConfigError(f"{where}: cannot drop privileges: running as uid {os.geteuid()}, changing to "
                              f"uid {uid} needs root (or CAP_SETUID and CAP_SETGID)") from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot drop privileges: {exc.strerror}") from None
    _verify(where, uid, gid)
    caps = capabilities()
    text = (f"running as {pw.pw_name} (uid {uid}, gid {gid}, groups {os.getgroups() or 'none'}), "
            f"effective capabilities {caps.get('CapEff', 0):#x}")
    log.info("privileges dropped: %s", text)
    return text


def _verify(where: str, uid: int, gid: int) -> None:
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise ConfigError(f"{where}: privilege drop failed: uids {os.getresuid()}, gids {os.getresgid()}")
    if uid == 0:
        return  # --user root: nothing to drop; allowed, but the checks below would fail by design
    if os.getgroups() not in ([], [gid]):
        raise ConfigError(f"{where}: privilege drop failed: supplementary groups {os.getgroups()} remain")
    caps = capabilities()
    left = {k: v for k, v in caps.items() if k in ("CapPrm", "CapEff", "CapAmb") and v}
    if left:
        raise ConfigError(f"{where}: privilege drop failed: capabilities left {left} (securebits keep caps?)")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise ConfigError(f"{where}: privilege drop failed: uid 0 could be regained")
