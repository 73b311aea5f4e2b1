"""The test VM: run commands where vcan0..vcanN-1 exist (`canbridge testvm`, `python -m bridge.hw.testvm`).

See hw/testvm/runner.py for the CLI and exit codes, canvm.sh for the VM itself.
"""

from bridge.hw.testvm.runner import main, vcan_available

__all__ = ["main", "vcan_available"]
