"""Holding off an emulated controller's interrupt, so that its RX FIFO overruns on any machine.

A flat-out flood from one SJA1000 into the other overran the receiver's 64-byte FIFO on a slow emulation
and not on a fast one (the guest drained the FIFO in time). Masking the receiving card's PCI INTx, as a
CPU busy elsewhere would, makes the overrun certain: QEMU honours the bit, the controller keeps receiving
into its FIFO, and the driver hears nothing until the mask is lifted, then reads the FIFO and the data
overrun (DOI) interrupt and counts rx_over_errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PCI_COMMAND = 0x04  # the command register's offset in config space (PCI Local Bus spec 3.0, 6.2.2)
PCI_COMMAND_INTX_DISABLE = 0x400  # bit 10: the device may not assert INTx


@contextlib.contextmanager
def interrupt_held_off(name: str) -> Iterator[None]:
    """Mask the PCI INTx of network interface NAME's card (kvaser_pci) for the block, then unmask it.

    Raises OSError if NAME has no PCI device (vcan) or the config space cannot be written (not root)."""
    config = Path(os.path.realpath(f"/sys/class/net/{name}/device")) / "config"
    with open(config, "r+b", buffering=0) as f:
        command = int.from_bytes(os.pread(f.fileno(), 2, PCI_COMMAND), "little")
        os.pwrite(f.fileno(), (command | PCI_COMMAND_INTX_DISABLE).to_bytes(2, "little"), PCI_COMMAND)
        try:
            yield
        finally:
            os.pwrite(f.fileno(), (command & ~PCI_COMMAND_INTX_DISABLE).to_bytes(2, "little"), PCI_COMMAND)
