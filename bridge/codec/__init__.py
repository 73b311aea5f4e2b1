"""Layer 1, codecs (sans-IO): bytes in, events out. socketcan.py is the one home of the kernel frame
layouts (can_frame, canfd_frame) and their flag constants.

bridge.frame (CanFrame, the frame object of the API edges) belongs to this layer too.
May import: bridge.errors only. Must not import sockets, select, time, logging or any other bridge
layer: time comes in as an argument."""
