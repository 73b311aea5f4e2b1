"""The lowest layer: the kernel and hardware side. CAN_RAW sockets and their socket options (cansock),
recvmmsg/sendmmsg (mmsg), link state from rtnetlink (linkstate), CAN link setup over netlink (links,
linksettings), raw sockets for capture (rawsock: CAN_RAW and AF_PACKET + BPF), network namespaces
(netns), the virtual CAN kernel (testvm), and the error types every layer raises (errors).

Imported as `bridge.hw` (the wheel installs this folder as bridge/hw; in a checkout bridge/hw/__init__.py
points there); it imports nothing else from bridge/ (bridge.errors re-exports bridge.hw.errors)."""
