"""Peer options for encryption and authentication (docs/cli.md, "TLS and encrypted UDP"):

    tls_cert=PATH, tls_key=PATH   our certificate chain and private key (PEM); a TLS server needs them
    tls_ca=PATH                   CA certificate(s) that must have signed the other side; on a server it
                                  makes client certificates required (mutual authentication)
    tls_server_name=NAME          clients: the name the server's certificate must carry (default: URL host)
    psk=HEX, psk_file=PATH        udp:// only: 32-byte pre-shared key, 64 hex digits (in the file: hex, or
                                  32 raw bytes); datagrams are sealed with ChaCha20-Poly1305

Which schemes take which option is each protocol's to say (bridge.protocols; the config asks it before
calling with_option). The files
are loaded when the bridge starts (bridge.security.tls), where a file that cannot be used is a ConfigError
naming the option; the psk is read here, at configuration time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bridge.codec import sealed
from bridge.errors import ConfigError

TLS_OPTIONS = ("tls_cert", "tls_key", "tls_ca", "tls_server_name")
PSK_OPTIONS = ("psk", "psk_file")
SECURITY_OPTIONS = TLS_OPTIONS + PSK_OPTIONS


@dataclass(frozen=True)
class Security:
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    psk: bytes | None = None  # 32 bytes

    @property
    def tls(self) -> bool:
        """True if any TLS option was given: the peer speaks TLS."""
        return any(getattr(self, key) is not None for key in TLS_OPTIONS)


def with_option(sec: Security, key: str, value, where: str, tls_client: bool = False) -> Security:
    """`sec` with option `key` (one of SECURITY_OPTIONS) set; tls_client: the peer is a TLS client (only a
    client checks tls_server_name). ConfigError naming the key if its value is bad."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    if key in TLS_OPTIONS:
        if key == "tls_server_name" and not tls_client:
            raise ConfigError(f"{where}: tls_server_name is a client option (tcp://, cannelloni+tcp://)")
        return replace(sec, **{key: value})
    if sec.psk is not None:
        raise ConfigError(f"{where}: {key}: give psk or psk_file, once")
    return replace(sec, psk=_psk_file(value, where) if key == "psk_file" else _psk_hex(value, f"{where}: psk"))


def _psk_hex(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != sealed.KEY_LEN:
        raise ConfigError(f"{where}: expected {2 * sealed.KEY_LEN} hex digits (a {sealed.KEY_LEN}-byte key, "
                          "e.g. from `openssl rand -hex 32`)")
    return key


def _psk_file(path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        raise ConfigError(f"{where}: psk_file: cannot read {path}: {exc.strerror}") from None
    if len(data) == sealed.KEY_LEN:
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return _psk_hex(text, f"{where}: psk_file {path}")
