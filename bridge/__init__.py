"""canbridge: SocketCAN <-> TCP/UDP bridge. See docs/architecture.md."""

__version__ = "0.1.0"
