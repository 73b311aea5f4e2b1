"""Command line: `canbridge IFACE PEER...`, `canbridge run -c FILE`, and the subcommands."""
