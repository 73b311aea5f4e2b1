"""The demo rig: `canbridge demo`, the two-namespace rig (gateway and remote joined by veth, a vcan0 and a
canbridge each) that the end-to-end tests and benchmarks also use, and its Mosquitto (`broker`).

May import bridge/tools/logs/ (probe, progress), no other room of bridge/tools/."""
