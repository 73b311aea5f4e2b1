"""The error types every layer raises on purpose. They live in the lowest layer so that hw/ can raise
them without importing bridge/; bridge.errors re-exports them (import them from there in bridge/)."""


class CanBridgeError(Exception):
    """Base class of every error canbridge raises on purpose."""


class ConfigError(CanBridgeError):
    """A configuration key, URL or command-line argument is invalid; the message names it."""


class ProtocolError(CanBridgeError):
    """Malformed input from a peer. The connection (or the one datagram) is dropped; `reason` is a
    short counter-friendly slug such as "bad_magic" or "len_too_large"."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
