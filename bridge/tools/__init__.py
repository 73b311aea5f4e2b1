"""Layer 7, tools: what a person runs beside the bridge: capture, dissect (the only scapy importer),
inspect, dump, top, replay, probe, demo (and its two-namespace rig), the stats client.

May import every lower layer. Must not import cli."""
