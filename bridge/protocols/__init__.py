"""Layer 5, protocols: one module per wire protocol (native, cannelloni, socketcand, udp_multicast) that
turns a sans-IO codec into endpoints, and the registry (bridge.protocols.registry): URL scheme ->
lazily imported protocol class. Third-party protocols register through the entry point group
`canbridge.protocols`.

May import: bridge.codec, bridge.core, bridge.security, bridge.endpoints, bridge.errors, hw. Must not
import daemon, tools or cli."""
