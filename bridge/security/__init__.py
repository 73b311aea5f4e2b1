"""Layer 3, security: TLS contexts (tls), the TLS and AEAD peer options (options) and access control
(access: read_only, write_allow, rate limits as write gates).

May import: bridge.codec, bridge.core, bridge.errors, hw. Must not import endpoints, protocols, daemon,
tools or cli: which scheme takes which option is the protocol's to say (bridge.protocols.registry)."""
