"""Layer 4, endpoints: one socket plus its I/O policy each: the SocketCAN bus (bus faults, link watch),
TCP client/server, UDP peer, multicast group, socketcand server, pending queues, liveness, write ledger.

May import: bridge.codec, bridge.core, bridge.security, bridge.errors, hw. Must not import protocols,
daemon, tools or cli: a protocol reaches an endpoint as a wire object (bridge.protocols.base.StreamWire,
DatagramWire), never by name."""
