"""Layer 6, daemon: the bridge process: app (builds endpoints from a Config through the protocol
registry), config, reload, operations (control socket, metrics, SIGHUP), sd_notify, log formats,
privilege drop.

May import every lower layer (codec, core, security, endpoints, protocols, errors, hw). Must not import
tools or cli."""
