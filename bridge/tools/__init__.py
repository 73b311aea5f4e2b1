"""Layer 7, tools: what a person runs beside the bridge, one sub-package per task:

    logs/     log files in every python-can format, `canbridge replay`, the probe (frames onto and off
              a bus with their timing), the progress line of long work
    inspect/  looking at a capture: `canbridge capture`, dissect (the only scapy importer), `canbridge
              inspect`, the Wireshark Lua dissector (wireshark/)
    live/     watching a live bus or fleet: `canbridge dump`, `top`, `stats`, and their sources (local
              CAN_RAW, a remote bridge over TCP, a fleet's MQTT broker) behind one interface (source.py)
    rig/      the demo rig: `canbridge demo`, the two-namespace rig and its Mosquitto
    data/     the Durango trace (GPL-3.0, see SOURCE.txt)

May import every lower layer, never cli. Between the rooms: logs imports no other room; inspect, live
and rig may import logs; nothing else crosses (tests/test_layers.py holds it)."""
