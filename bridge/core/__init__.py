"""Layer 2, core: the reactor (epoll, timers, signals), the stream transport (write buffer, watermarks),
the router (filters, gates, echo suppression, slow-sink policy) and counters.

May import: bridge.codec, bridge.errors, hw. Must not import endpoints, protocols, security, daemon,
tools or cli: nothing here knows a socket type or a wire protocol."""
