"""Watching a live bus or fleet: `canbridge dump` (candump-identical), `canbridge top`, `canbridge stats`
(the stats client), and the sources they read: `source` (the interface: Rx, Drops, SourceClosed, the
filter spec), `local` (CAN_RAW), `remote` (a bridge's native TCP; also the python-can plugin's client),
`mqtt_source` (a fleet's broker), `opener` (a source by its spec).

May import bridge/tools/logs/ (log files, the CAN socket opener), no other room of bridge/tools/."""
