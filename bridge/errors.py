"""Exception types (defined in bridge.hw.errors, the lowest layer, so hw/ can raise them too). Codecs raise
only their own documented subclass of ProtocolError."""

from bridge.hw.errors import CanBridgeError, ConfigError, ProtocolError

__all__ = ["CanBridgeError", "ConfigError", "ProtocolError"]
