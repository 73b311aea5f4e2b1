"""Layer 8, cli: argument parsing and dispatch only (`canbridge IFACE PEER...`, `canbridge run -c FILE`,
the subcommands, `canbridge link`). May import every layer; nothing imports it.
The python-can plugin (bridge.pycan) and CanFrame (bridge.frame) sit at the top of the package."""
