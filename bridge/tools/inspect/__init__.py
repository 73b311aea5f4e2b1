"""Looking at a capture: `canbridge capture` (raw sockets into pcapng), `dissect` (scapy layers and
frame extraction; the only scapy importer), `canbridge inspect` (per-hop latency, loss, duplicates),
and the Wireshark Lua dissector in wireshark/.

May import bridge/tools/logs/ (progress, percentile), no other room of bridge/tools/."""
