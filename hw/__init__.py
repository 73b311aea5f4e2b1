"""The lowest layer: the kernel and hardware side. CAN links over netlink (links), raw sockets for
capture (rawsock: CAN_RAW and AF_PACKET + BPF), CAN_RAW sockets and socket options (cansock, sockopt),
recvmmsg/sendmmsg (mmsg), network namespaces (netns), and the virtual CAN kernel (testvm).

Imports nothing from bridge/ (bridge/ imports hw/). Errors are hw.errors' (bridge.errors re-exports them)."""
