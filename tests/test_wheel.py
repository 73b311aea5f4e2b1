"""The wheel as a user installs it: hw/ ships as bridge/hw (no top-level `hw` package that could clash
with another distribution), the checkout's bridge/hw shim is not in it, and `canbridge demo`'s default
trace and the Wireshark dissector are inside the package. Built with hatchling (the project's build
backend) from this tree, then imported from the unpacked wheel with the checkout off the path."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_layout_and_installed_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("canbridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("hw/")]
    assert {"bridge/hw/cansock.py", "bridge/hw/testvm/canvm.sh", "bridge/tools/data/durango_mapswitch.log",
            "bridge/tools/data/LICENSE-ElDominio-CANBUSlogs-GPL-3.0.txt",
            "bridge/tools/inspect/wireshark/canbridge.lua"} <= set(names)
    assert zipfile.ZipFile(wheel).read("bridge/hw/__init__.py") == (ROOT / "hw" / "__init__.py").read_bytes()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys, importlib.util; import bridge.hw.cansock, bridge.tools.rig.demo as d; "
            "print(bridge.hw.cansock.__file__, d.DEFAULT_TRACE.is_file(), importlib.util.find_spec('hw'))")
    # -S: no site-packages, so neither the editable install nor the checkout is on the path
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(site / "bridge" / "hw" / "cansock.py"), "True", "None"]
