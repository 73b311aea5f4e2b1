"""`canbridge testvm`: run a command where vcan0..vcanN-1 exist (and, with --can, real CAN controllers).

If this host's kernel has CAN_RAW and vcan, the command runs here (natively), after vcan0..vcanN-1
have been created (root needed for that), set to mtu 72 and brought up. Otherwise it runs inside a
throw-away QEMU VM (``canvm.sh`` beside this file; recipe in shared/reference/test-vm.md) whose root
file system is this host's ``/``, in the same directory, with PATH, VIRTUAL_ENV, PYTHONPATH, CI,
PYTEST_ADDOPTS and every CANBRIDGE_* variable passed in, and CANBRIDGE_IN_TESTVM=1 set.
With `--can sja1000:N` (repeatable: one emulated bus each) the command always runs in the VM, which
then also has QEMU's emulated SJA1000 controllers (kvaser_pci) as can0..canM-1 (docs/testvm.md).

Exit codes: the command's own exit code, except
  124  --timeout expired (VM or native)
  125  the current directory does not exist inside the VM
  127  the command was not found
  255  the VM died without the command's exit code (kernel panic, qemu crash)
    3  neither native vcan nor QEMU usable (the message says what to install), or --native /
       --vm asked for what this host cannot do; also canvm.sh's code for a missing prerequisite
    2  usage error
  130/143  interrupted by SIGINT/SIGTERM (the VM is stopped)
A command's own 3/124/125/127/255 cannot be told apart from these.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

EXIT_UNUSABLE = 3
EXIT_TIMEOUT = 124
EXIT_VM_FAILED = 255

CANFD_MTU = 72
ARPHRD_CAN = 280
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PASS_ENV = ("PYTEST_ADDOPTS",)  # besides PATH VIRTUAL_ENV PYTHONPATH CI (canvm.sh) and CANBRIDGE_*

INSTALL_HINT = """\
canbridge testvm: this kernel has no usable vcan and the test VM cannot run here ({why}).
Install the VM's tools (Debian/Ubuntu, as root):
    apt-get update        # also needed once: the VM kernel is fetched with apt-get download
    apt-get install -y --no-install-recommends qemu-system-x86 kmod iproute2
or run scripts/setup.sh, which does this and warms the VM kernel cache."""

EPILOG = """\
examples:
  canbridge testvm -- ip -br link
  canbridge testvm --vcan 4 --timeout 2400 --mem 2G -- .venv/bin/python -m pytest -m vcan
  canbridge testvm --vm -- sh -c 'candump -n 1 vcan0 & cansend vcan0 123#00; wait'
  canbridge testvm --vcan 4 --can sja1000:2 -- sh -c 'candump -n 1 can1 & cansend can0 123#00; wait'

exit status: CMD's exit code; 124 timeout; 255 the VM died; 3 nothing usable (neither native
vcan nor QEMU: install qemu-system-x86 kmod iproute2); 2 usage error.
environment: CANVM_QEMU (qemu binary), CANVM_CACHE_DIR, CANVM_ENV, CANVM_APPEND (see canvm.sh)."""


# --------------------------------------------------------------------------- host checks
def can_raw_available() -> bool:
    """True if this kernel lets us open a CAN_RAW socket."""
    if not hasattr(socket, "AF_CAN"):
        return False
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except OSError:
        return False
    return True


def _iface(name: str) -> Path:
    return Path("/sys/class/net") / name


def _is_can_iface(name: str) -> bool:
    try:
        return int((_iface(name) / "type").read_text()) == ARPHRD_CAN
    except (OSError, ValueError):
        return False


def vcan_available() -> bool:
    """True if this host can open a CAN_RAW socket and vcan0 exists (natively or inside the VM)."""
    return _is_can_iface("vcan0") and can_raw_available()


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN)
    return shutil.which(name, path=path)


def _iface_ok(name: str) -> bool:
    try:
        mtu = int((_iface(name) / "mtu").read_text())
        flags = int((_iface(name) / "flags").read_text(), 16)
    except (OSError, ValueError):
        return False
    return _is_can_iface(name) and mtu == CANFD_MTU and bool(flags & 0x1)  # IFF_UP


def ensure_native_vcans(count: int) -> str | None:
    """Create/configure vcan0..count-1 on this host. Returns None on success, else why not."""
    if not can_raw_available():
        return "no CAN_RAW in this kernel"
    todo = [f"vcan{i}" for i in range(count) if not _iface_ok(f"vcan{i}")]
    if not todo:
        return None
    ip = _which("ip")
    if os.geteuid() != 0 or ip is None:
        return f"{', '.join(todo)} missing or not up with mtu {CANFD_MTU}, and " + (
            "creating them needs root" if ip else "iproute2 (ip) is not installed")
    for name in todo:
        steps = [] if _iface(name).exists() else [[ip, "link", "add", "dev", name, "type", "vcan"]]
        steps += [[ip, "link", "set", name, "down"], [ip, "link", "set", name, "mtu", str(CANFD_MTU), "up"]]
        for argv in steps:
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode:
                return f"{' '.join(argv[1:])}: {r.stderr.strip() or r.returncode}"
    return None


def canvm_script() -> Path:
    ref = resources.files("bridge.hw.testvm") / "canvm.sh"
    return ref if isinstance(ref, Path) else Path(__file__).with_name("canvm.sh")


def vm_unusable_reason() -> str | None:
    """None if canvm.sh can boot a VM here, else what is missing."""
    qemu = os.environ.get("CANVM_QEMU") or "qemu-system-x86_64"
    missing = [f"{qemu} (qemu-system-x86)"] if _which(qemu) is None else []
    if _which("depmod") is None or _which("modprobe") is None:
        missing.append("depmod/modprobe (kmod)")
    if _which("ip") is None:
        missing.append("ip (iproute2)")
    if _which("bash") is None:
        missing.append("bash")
    return "missing: " + ", ".join(missing) if missing else None


# --------------------------------------------------------------------------- running
def _run(argv: list[str], env: dict[str, str] | None, timeout: float) -> int:
    """Run argv with inherited stdio; forward SIGINT/SIGTERM/SIGHUP; kill on timeout."""
    try:
        proc = subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        print(f"canbridge testvm: {argv[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError as e:
        print(f"canbridge testvm: {argv[0]}: {e.strerror}", file=sys.stderr)
        return 126
    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except OSError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            rc = proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            print(f"canbridge testvm: timed out after {timeout:g}s", file=sys.stderr)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return EXIT_TIMEOUT
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc  # killed by a signal: report it the way a shell does


def _seconds(t: float) -> str:
    return str(int(t)) if t == int(t) else f"{t:.3f}"


def run_native(cmd: list[str], timeout: float) -> int:
    return _run(cmd, None, timeout)


def run_vm(cmd: list[str], *, vcan: int, timeout: float, mem: str, cpus: int, can: tuple[int, ...] = (),
           disk: str | None = None) -> int:
    env = dict(os.environ)
    passed = env.get("CANVM_ENV", "").split()
    passed += [k for k in env if (k.startswith("CANBRIDGE_") or k in _PASS_ENV) and k not in passed]
    env["CANBRIDGE_IN_TESTVM"] = "1"
    if "CANBRIDGE_IN_TESTVM" not in passed:
        passed.append("CANBRIDGE_IN_TESTVM")
    env.update(CANVM_ENV=" ".join(passed), CANVM_VCAN=str(vcan), CANVM_TIMEOUT=_seconds(timeout),
               CANVM_MEM=mem, CANVM_CPUS=str(cpus), CANVM_CAN=" ".join(map(str, can)))
    if disk:
        env["CANVM_DISK"] = os.path.abspath(disk)
    # canvm.sh enforces the timeout itself (and answers 124); ours is only a backstop
    return _run(["bash", str(canvm_script()), "--", *cmd], env, 0)


# --------------------------------------------------------------------------- CLI
def _mem(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[KMGT]?", value, flags=re.I):
        raise argparse.ArgumentTypeError(f"not a memory size like 1G or 2048M: {value!r}")
    return value


def _nonneg(kind):
    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
        return v
    return parse


CAN_CONTROLLERS = ("sja1000",)  # what QEMU emulates and the VM kernel drives (kvaser_pci); ctucan: no driver
CAN_MAX = 8  # controllers per bus: each is a PCI device of the VM


def _can_bus(value: str) -> int:
    """--can sja1000:N -> N, the controllers on one emulated bus."""
    kind, _, count = value.partition(":")
    if kind not in CAN_CONTROLLERS or not count.isdigit() or not 1 <= int(count) <= CAN_MAX:
        raise argparse.ArgumentTypeError(
            f"expected {'|'.join(CAN_CONTROLLERS)}:N with N 1..{CAN_MAX} (controllers on one bus), got {value!r}")
    return int(count)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="canbridge testvm",
        usage="%(prog)s [-h] [--vcan N] [--timeout SECONDS] [--mem 1G] [--cpus 2] [--native | --vm] "
              "[--can sja1000:N]... [--disk FILE] -- CMD [ARGS...]",
        description="Run CMD where vcan0..vcanN-1 exist: natively if this kernel has CAN_RAW and vcan, "
                    "else in a throw-away QEMU VM that shares this host's files (same cwd, same venv). "
                    "CMD's stdout/stderr stream through and its exit code is returned.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vcan", type=_nonneg(int), default=2, metavar="N",
                   help="create vcan0..vcanN-1, mtu 72, up (default: 2)")
    p.add_argument("--can", type=_can_bus, action="append", default=[], metavar="sja1000:N",
                   help="N emulated SJA1000 controllers (QEMU kvaser_pci) on one emulated bus, up as can0.. at "
                        "500 kbit/s; repeat for another bus (numbered on); implies --vm")
    p.add_argument("--timeout", type=_nonneg(float), default=0, metavar="SECONDS",
                   help="kill CMD (or the VM) after this many seconds, exit 124; 0 = none (default)")
    p.add_argument("--mem", type=_mem, default="1G", help="VM memory (default: 1G)")
    p.add_argument("--cpus", type=_nonneg(int), default=2, help="VM vCPUs (default: 2)")
    p.add_argument("--disk", metavar="FILE",
                   help="attach FILE (a raw ext4 image, e.g. made with mkfs.ext4 -F FILE 64M) as the VM's disk, "
                        "mounted at /run/disk ($CANBRIDGE_TESTVM_DISK): unlike the host's 9p root, what the "
                        "guest has not fsynced is lost when the VM is cut (implies --vm)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--native", action="store_const", dest="where", const="native",
                       help="run on this host only; fail (exit 3) if its kernel has no vcan")
    where.add_argument("--vm", action="store_const", dest="where", const="vm",
                       help="always use the VM, even if this kernel has vcan")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    return p


def main(argv: list[str]) -> int:
    p = build_parser()
    try:
        a = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or usage error (2)
        return int(e.code or 0)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.print_usage(sys.stderr)
        print("canbridge testvm: error: no command given (put it after --)", file=sys.stderr)
        return 2
    if a.cpus < 1:
        print("canbridge testvm: error: --cpus must be >= 1", file=sys.stderr)
        return 2

    if a.can and a.where == "native":  # emulated controllers exist only in the VM
        print("canbridge testvm: cannot run natively: --can needs the VM's emulated controllers", file=sys.stderr)
        return EXIT_UNUSABLE
    if a.disk is not None:
        if a.where == "native":
            print("canbridge testvm: error: --disk needs the VM (not --native)", file=sys.stderr)
            return 2
        if not os.path.isfile(a.disk):
            print(f"canbridge testvm: error: --disk: no such file: {a.disk}", file=sys.stderr)
            return 2
    if a.can or a.disk is not None:
        a.where = "vm"
    native_why = None if a.where == "vm" else ensure_native_vcans(a.vcan)
    if a.where != "vm" and native_why is None:
        return run_native(cmd, a.timeout)
    if a.where == "native":
        print(f"canbridge testvm: cannot run natively: {native_why}", file=sys.stderr)
        return EXIT_UNUSABLE
    vm_why = vm_unusable_reason()
    if vm_why is not None:
        why = vm_why if a.where == "vm" else f"{native_why}; {vm_why}"
        print(INSTALL_HINT.format(why=why), file=sys.stderr)
        return EXIT_UNUSABLE
    return run_vm(cmd, vcan=a.vcan, timeout=a.timeout, mem=a.mem, cpus=a.cpus, can=tuple(a.can), disk=a.disk)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
