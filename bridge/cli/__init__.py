"""Layer 8, cli: argument parsing and dispatch only (`canbridge IFACE PEER...`, `canbridge run -c FILE`,
the subcommands, `canbridge link`). May import every layer; nothing imports it.
The python-can plugin (bridge.pycan) sits at the top of the package; CanFrame (bridge.frame), the frame
object of the API edges, is pure and counts as a codec (any layer may use it)."""
