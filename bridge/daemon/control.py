"""The control socket: a unix stream socket the reactor serves without blocking, for `canbridge stats`.

Protocol: newline-delimited JSON. The client sends `{"cmd": "stats"}\\n`, the bridge answers one JSON
object on one line and keeps the connection open for further requests (`canbridge stats --watch`).
Commands are the keys of the `commands` dict given to ControlServer; an unknown command or a request
that is not a JSON object gets `{"error": "..."}`. A request longer than MAX_REQUEST bytes closes the
connection (counted as errors["request_too_long"]). The socket is created mode 0660.

Default path (`default_path`): /run/canbridge/NAME.sock when /run/canbridge is writable (systemd's
RuntimeDirectory=canbridge), else $XDG_RUNTIME_DIR/canbridge-NAME.sock, else /tmp/canbridge-NAME.sock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import stat
from collections.abc import Callable

from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.core.transport import StreamTransport

log = logging.getLogger(__name__)

MAX_REQUEST = 4096  # bytes in one request line: every command is a short JSON object
MAX_CLIENTS = 8  # concurrent control connections; more are refused (a few operators, not a fan-out)
SOCKET_MODE = 0o660  # owner and group (e.g. a "canbridge" group of operators) may query
RUN_DIR = "/run/canbridge"


def candidate_paths(name: str) -> list[str]:
    """Where a bridge called `name` puts its control socket by default, in order of preference."""
    paths = [os.path.join(RUN_DIR, f"{name}.sock")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(os.path.join(runtime, f"canbridge-{name}.sock"))
    # $TMPDIR rather than a fixed /tmp: the test VM's /tmp is the host's, shared over 9p, where a
    # unix socket cannot be created; its TMPDIR is VM-local
    paths.append(os.path.join(tempfile.gettempdir(), f"canbridge-{name}.sock"))
    return paths


def default_path(name: str) -> str:
    """The first candidate path whose directory this process may write to."""
    paths = candidate_paths(name)
    for path in paths:
        if os.access(os.path.dirname(path), os.W_OK | os.X_OK):
            return path
    return paths[-1]


class ControlServer:
    """Listens on `path`; commands maps a command name to a function(request dict) -> JSON-ready dict,
    called in the reactor thread. Raises OSError when the path is taken by a live server or cannot be
    bound. A stale socket file (nobody listening) is replaced."""

    def __init__(self, reactor: Reactor, path: str, commands: dict[str, Callable[[dict], dict]],
                 max_clients: int = MAX_CLIENTS) -> None:
        self.reactor = reactor
        self.path = path
        self.commands = commands
        self.max_clients = max_clients
        self.counters = Counters()
        self.clients: list[ControlConnection] = []
        _remove_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            os.chmod(path, SOCKET_MODE)
            self.sock.listen(8)
        except OSError as exc:
            self.sock.close()
            raise OSError(exc.errno, f"cannot open control socket {path}: {exc.strerror}") from None
        self._inode = os.stat(path).st_ino
        self.sock.setblocking(False)
        reactor.add_reader(self.sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        for _ in range(self.max_clients):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters.errors["accept"] += 1
                log.warning("control socket %s: accept failed: %s", self.path, exc)
                return
            if len(self.clients) >= self.max_clients:
                self.counters.errors["too_many_clients"] += 1
                sock.close()
                continue
            self.clients.append(ControlConnection(self, sock))

    def handle(self, line: bytes) -> dict:
        """One request line -> the response object (never raises for bad input)."""
        try:
            request = json.loads(line)
        except ValueError as exc:
            self.counters.errors["bad_request"] += 1
            return {"error": f"not JSON: {exc}"}
        cmd = request.get("cmd") if isinstance(request, dict) else None
        command = self.commands.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            self.counters.errors["unknown_command"] += 1
            return {"error": f"unknown command {cmd!r}; expected one of {sorted(self.commands)}"}
        self.counters.rx_frames += 1  # requests served (a control socket carries no CAN frames)
        return command(request)

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        self.reactor.forget(self.sock.fileno())
        self.sock.close()
        try:  # only our own file: a second bridge may have replaced it meanwhile
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass


class ControlConnection:
    """One client: splits lines, answers each, closes on an oversized line or a client that stops reading."""

    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self._buffer = b""
        self.transport = StreamTransport(server.reactor, sock, self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer and not self.transport.closed:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                self._reply(self.server.handle(line))
        if len(self._buffer) > MAX_REQUEST:
            self.server.counters.errors["request_too_long"] += 1
            self._reply({"error": f"request longer than {MAX_REQUEST} bytes"})
            self.close()

    def _reply(self, response: dict) -> None:
        self.transport.write(json.dumps(response, default=str).encode() + b"\n")

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:  # asks faster than it reads: not an operator, drop it
        self.server.counters.errors["client_not_reading"] += 1
        self.close()

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc) -> None:
        if self in self.server.clients:
            self.server.clients.remove(self)

    def close(self) -> None:
        self.transport.close()


def _remove_stale(path: str) -> None:
    """Unlink `path` if it is a socket nobody listens on; raise OSError(EADDRINUSE) if a server answers."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not ours to remove: bind() reports EADDRINUSE with the path
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a live server whose backlog is full must not hang our start
    try:
        probe.connect(path)
    except TimeoutError:
        pass  # someone is there, just busy
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(98, f"cannot open control socket {path}: another bridge is serving it (use --control)")


def request(path: str, cmd: str = "stats", timeout: float = 5.0) -> dict:
    """Client side, blocking: send one command, return the decoded answer. OSError when nobody listens;
    ValueError when the answer is not JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        return json.loads(_read_line(sock))


class ControlClient:
    """A kept-open connection for repeated requests (`canbridge stats --watch`)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self._rest = b""

    def request(self, cmd: str = "stats") -> dict:
        self.sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        line, self._rest = _read_line(self.sock, self._rest)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


def _read_line(sock: socket.socket, rest: bytes | None = None):
    """Read until a newline. With `rest` (bytes left over from the last call) returns (line, rest)."""
    buf = rest or b""
    while b"\n" not in buf:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise OSError("control socket closed before a full answer")
        buf += chunk
    line, _, tail = buf.partition(b"\n")
    return (line, tail) if rest is not None else line
