#!/usr/bin/env bash
# scripts/setup.sh - idempotent bootstrap of a Debian/Ubuntu machine for canbridge (dev and CI).
# Installs what is missing, and only that:
#   apt:  qemu-system-x86 kmod iproute2 (the test VM), can-utils, tshark (+ its libpcap: capture filters),
#         systemd + udev (systemd-analyze verify, udevadm test of udev/), mosquitto (MQTT tests), mosquitto-clients (benchmarks/broker_knee.py),
#         nats-server (tests/nats_cluster.py: a 3-node cluster with MQTT 3.1.1 listeners), zsh
#         (completion tests), python3-venv (if venv is missing)
#   .venv with `pip install -e '.[test]'` (again whenever pyproject.toml changes), then '.[fuzz]' best effort
#   the test VM's kernel cache (~/.cache/canvm, filled by hw/testvm/canvm.sh on its first run)
# Runs apt as root, or through sudo. Safe to run again: a set-up machine takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*"; }
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo DEBIAN_FRONTEND=noninteractive "$@"
  else echo "setup: need root for: $* (run this script as root, or install sudo)" >&2; return 1
  fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- 1. Debian packages ------------------------------------------------------------------------
command -v apt-get >/dev/null || { echo "setup: apt-get not found: this script supports Debian/Ubuntu only" >&2; exit 1; }
want=(qemu-system-x86 kmod iproute2 can-utils tshark systemd udev mosquitto mosquitto-clients nats-server zsh)  # tshark: libpcap; zsh: completion tests
python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv)
missing=()
for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done

CACHE=${CANVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canvm}
vm_warm() { [ -f "$CACHE/kernel.ok" ] && [ -f "$CACHE/initrd.img" ]; }
# a cold VM cache is filled with `apt-get download linux-image-...`, which needs apt's package lists
kernel_known() { apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]'; }

if [ ${#missing[@]} -gt 0 ] || { ! vm_warm && ! kernel_known; }; then
  say "apt-get update"
  as_root apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | as_root debconf-set-selections 2>/dev/null || true
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt packages present: ${want[*]}"
fi

# --- 2. the virtualenv ---------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv (python3 -m venv)"
  python3 -m venv .venv
fi
stamp=.venv/.canbridge-setup
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python -VV | head -1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ] ||
   ! compgen -G '.venv/lib/python3*/site-packages/canbridge-*.dist-info' >/dev/null; then
  say "pip install -e '.[test]' into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  printf '%s\n' "$want_stamp" > "$stamp"
else
  say ".venv up to date (canbridge installed editable, pyproject.toml unchanged)"
fi
# optional extra `fuzz` (atheris) for test.sh's fuzz stage: best effort, binary wheels only (a source
# build needs clang/libFuzzer); a failure is remembered per pyproject/Python and only noted
fuzz_stamp=.venv/.canbridge-fuzz
if .venv/bin/python -c 'import atheris' 2>/dev/null; then
  say "atheris present (fuzz stage)"
elif [ "$(cat "$fuzz_stamp" 2>/dev/null)" = "$want_stamp" ]; then
  say "note: atheris not installable here (tried before): the fuzz stage will be skipped"
elif .venv/bin/python -m pip install -q --disable-pip-version-check --only-binary atheris -e '.[fuzz]'; then
  say "installed the fuzz extra (atheris)"
else
  printf '%s\n' "$want_stamp" > "$fuzz_stamp"
  say "note: pip install -e '.[fuzz]' failed (no atheris wheel for this Python?): the fuzz stage will be skipped"
fi

# --- 3. the test VM ------------------------------------------------------------------------------
if python3 -c 'import socket; socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()' 2>/dev/null; then
  say "this kernel has CAN_RAW: vcan tests can run natively (tests/test_testvm.py still boots the VM)"
fi
# tests/test_testvm.py boots the VM either way; fill the cache once here, not in two runs at once
if vm_warm; then
  say "test VM kernel cache warm ($CACHE)"
else
  say "warming the test VM kernel cache ($CACHE; downloads the Debian kernel once, ~15 s)"
  hw/testvm/canvm.sh true
fi
say "done"
