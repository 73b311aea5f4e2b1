"""Hardware-facing helpers of canbridge that are not the bridge itself (the test VM: hw.testvm)."""
