"""Sans-IO codecs: bytes in, events out. No sockets, clocks or logging in this package."""
