#!/bin/bash
# canvm.sh - run a command inside a throw-away QEMU VM (Debian kernel) that has vcan0..vcanN-1 up.
# The host's / is the VM's / (9p, read-write; /run, /dev/shm private; TMPDIR=/run/tmp), the command runs in the cwd,
# its stdout/stderr come back on stdout/stderr and its exit code is canvm.sh's exit code.
# Recipe and measurements: shared/reference/test-vm.md. Front end: `canbridge testvm` (hw/testvm/runner.py).
#   usage: canvm.sh [--] CMD [ARGS...]
#   env:   CANVM_MEM=1G CANVM_CPUS=2 CANVM_TIMEOUT=0 (s, 0=none) CANVM_ENV="VAR1 VAR2" (extra vars to pass)
#          CANVM_VCAN=2 (vcan0..vcanN-1, mtu 72, up) CANVM_QEMU=qemu-system-x86_64 (binary)
#          CANVM_CAN="2 1" (emulated SJA1000 controllers per emulated bus, QEMU kvaser_pci: can0,can1 on the
#          first bus, can2 on the second; 500 kbit/s, up, txqueuelen as the driver makes it)
#          CANVM_CACHE_DIR=~/.cache/canvm CANVM_APPEND="" (extra kernel args) CANVM_ACCEL=tcg,thread=multi
#          CANVM_DISK=FILE (a raw ext4 image: virtio disk /dev/vda, mounted at /run/disk, CANBRIDGE_TESTVM_DISK
#          set to that; written back to FILE on the guest's flushes, so a cut VM keeps what it fsynced)
#   exit:  CMD's exit code; 124 CANVM_TIMEOUT hit; 125 cwd missing in the VM; 255 the VM died without
#          an exit code; 3 a host prerequisite is missing (qemu, kmod, iproute2, apt lists); 2 usage;
#          130/143 interrupted (SIGINT/SIGTERM; the VM is stopped).
set -euo pipefail
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
VCAN=${CANVM_VCAN:-2}
case $VCAN in ''|*[!0-9]*) echo "canvm: CANVM_VCAN must be a number, not '$VCAN'" >&2; exit 2;; esac
VCAN_LIST=$(seq 0 $((VCAN - 1)) | tr '\n' ' ')
CAN_ARGS=(); NCAN=0; bus=0
for n in ${CANVM_CAN:-}; do  # one QEMU can-bus per entry, n kvaser_pci boards (one SJA1000 each) on it
  case $n in ''|*[!0-9]*) echo "canvm: CANVM_CAN must list numbers, not '$CANVM_CAN'" >&2; exit 2;; esac
  CAN_ARGS+=(-object "can-bus,id=canbus$bus"); bus=$((bus + 1)); NCAN=$((NCAN + n))
  for _ in $(seq "$n"); do CAN_ARGS+=(-device "kvaser_pci,canbus=canbus$((bus - 1))"); done
done
CAN_LIST=""; if [ "$NCAN" -gt 0 ]; then CAN_LIST=$(seq 0 $((NCAN - 1)) | tr '\n' ' '); fi
QEMU=${CANVM_QEMU:-qemu-system-x86_64}
# the command's environment, taken before PATH is widened for this script's own tools
ENVSH=$(for v in PATH VIRTUAL_ENV PYTHONPATH CI ${CANVM_ENV:-}; do [ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}"; done
        echo "export CANBRIDGE_IN_TESTVM=1")
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
missing=""
command -v "$QEMU" >/dev/null || missing="$missing qemu-system-x86($QEMU)"
command -v depmod >/dev/null && command -v modprobe >/dev/null || missing="$missing kmod"
command -v ip >/dev/null || missing="$missing iproute2"
if [ -n "$missing" ]; then
  echo "canvm: missing on this host:$missing" >&2
  echo "canvm: install: apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 kmod iproute2" >&2
  exit 3
fi
CACHE=${CANVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canvm}
mkdir -p "$CACHE"

# --- 1. kernel + static busybox: Debian packages, unpacked (not installed) into the cache -------
if [ ! -f "$CACHE/kernel.ok" ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || { echo "canvm: no kernel package known to apt: run 'apt-get update' first" >&2; exit 3; }
  rm -rf "$CACHE/k" "$CACHE/bb" && mkdir -p "$CACHE/k" "$CACHE/bb"
  (cd "$CACHE" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static >/dev/null &&
   dpkg-deb -x "$pkg"_*.deb k && dpkg-deb -x busybox-static_*.deb bb && rm -f ./*.deb) ||
    { echo "canvm: could not fetch $pkg and busybox-static (try 'apt-get update')" >&2; exit 3; }
  KVER=$(ls "$CACHE/k/lib/modules"); depmod -b "$CACHE/k" "$KVER"
  # uncompressed vmlinux boots through PVH: skips firmware + in-guest decompression (~2.5 s)
  python3 - "$CACHE/k/boot/vmlinuz-$KVER" "$CACHE/vmlinux" <<'PY' || rm -f "$CACHE/vmlinux"
import lzma, sys
d = open(sys.argv[1], "rb").read(); i = d.find(b"\xfd7zXZ\x00")
if i < 0: sys.exit(1)
open(sys.argv[2], "wb").write(lzma.LZMADecompressor().decompress(d[i:]))
PY
  rm -f "$CACHE/initrd.img"; echo "$KVER" > "$CACHE/kernel.ok"
fi
DISK=${CANVM_DISK:-}
[ -z "$DISK" ] || [ -f "$DISK" ] || { echo "canvm: CANVM_DISK: no such file: $DISK" >&2; exit 2; }
KVER=$(cat "$CACHE/kernel.ok"); KDIR="$CACHE/k"; BB="$CACHE/bb/bin/busybox"
KERNEL="$CACHE/vmlinux"; [ -f "$KERNEL" ] || KERNEL="$KDIR/boot/vmlinuz-$KVER"

# --- 2. initramfs: static busybox + virtio/9p modules; mounts host / and switches to it -------
if [ ! -f "$CACHE/initrd.img" ]; then
  T=$(mktemp -d); mkdir -p "$T/bin" "$T/mod" "$T/proc" "$T/dev" "$T/newroot"; cp "$BB" "$T/bin/busybox"
  modprobe -d "$KDIR" -S "$KVER" --show-depends -a virtio_pci 9pnet_virtio 9p |
    awk '$1=="insmod" && !seen[$2]++ {print $2}' |
    while read -r f; do cp "$f" "$T/mod/"; basename "$f" .ko >> "$T/mod/order"; done
  cat > "$T/init" <<'EOI'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t devtmpfs dev /dev
for m in $($B cat /mod/order); do $B insmod /mod/$m.ko; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /newroot ||
  { echo "canvm: cannot mount host root" >&2; $B poweroff -f; }
$B umount /proc; $B umount /dev
exec $B switch_root /newroot /bin/sh "$canvm_dir/stage2.sh"
EOI
  chmod +x "$T/init"; (cd "$T" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -1) > "$CACHE/initrd.img"; rm -rf "$T"
fi

# --- 3. per-run files: stage2 (PID 1 on the host root), the command, the environment ----------
W=$(mktemp -d /tmp/canvm.XXXXXX); trap 'rm -rf "$W"' EXIT
printf '%s\n' "$ENVSH" > "$W/env.sh"
{ printf 'cd %q || { echo "canvm: no such directory in the VM: %q" >&2; exit 125; }\nexec' "$PWD" "$PWD"; printf ' %q' "$@"; printf '\n'; } > "$W/cmd.sh"
# TMPDIR=/run/tmp (private tmpfs): over 9p, ftruncate() of an open but unlinked file fails (ENOENT),
# which breaks tempfile.TemporaryFile and so pytest's output capture. /tmp itself stays the host's.
# To override, pass TMPDIR in: CANVM_ENV=TMPDIR.
cat > "$W/stage2.sh" <<EOS
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm; mount -t tmpfs run /run
mkdir -p /lib/modules; mount --bind "$KDIR/lib/modules" /lib/modules
mkdir -m 1777 /run/tmp; export TMPDIR=/run/tmp
stty -F /dev/ttyS0 raw -echo; stty -F /dev/ttyS1 raw -echo
hostname canvm; ip link set lo up
modprobe -a vcan vxcan can-raw can-bcm can-gw veth sch_netem
for i in $VCAN_LIST; do ip link add dev vcan\$i type vcan && ip link set vcan\$i mtu 72 up; done
if [ -n "$CAN_LIST" ]; then  # PCI slot order = command-line order = can0, can1, ...
  modprobe kvaser_pci
  for i in $CAN_LIST; do
    n=0; while [ ! -e /sys/class/net/can\$i ] && [ \$n -lt 100 ]; do sleep 0.1; n=\$((n + 1)); done
    ip link set can\$i type can bitrate 500000 && ip link set can\$i up ||
      echo "canvm: can\$i did not come up" >&2
  done
fi
. "$W/env.sh"
if [ -n "$DISK" ]; then
  modprobe -a virtio_blk ext4; mkdir -p /run/disk
  mount -t ext4 /dev/vda /run/disk || { echo "canvm: cannot mount CANVM_DISK (an ext4 image?)" >&2; echo 3 > "$W/rc"; "$BB" poweroff -f; }
  export CANBRIDGE_TESTVM_DISK=/run/disk
fi
bash "$W/cmd.sh" </dev/null >/dev/ttyS0 2>/dev/ttyS1; echo \$? > "$W/rc"
sync; "$BB" poweroff -f
EOS

# --- 4. boot --------------------------------------------------------------------------------
# in the background so that SIGINT/SIGTERM/SIGHUP here stop the VM (timeout runs in its own process group)
set +e; got=""
timeout -k 5 "${CANVM_TIMEOUT:-0}" "$QEMU" -accel "${CANVM_ACCEL:-tcg,thread=multi}" \
  -M q35 -cpu max -smp "${CANVM_CPUS:-2}" -m "${CANVM_MEM:-1G}" \
  -nodefaults -no-user-config -display none -no-reboot \
  -chardev stdio,id=out -serial chardev:out \
  -chardev file,id=err,path=/dev/stderr,append=on -serial chardev:err \
  -fsdev local,id=root,path=/,security_model=none,multidevs=remap \
  -device virtio-9p-pci,fsdev=root,mount_tag=hostroot "${CAN_ARGS[@]}" \
  ${DISK:+-drive "file=$DISK,format=raw,if=virtio,cache=writeback"} \
  -kernel "$KERNEL" -initrd "$CACHE/initrd.img" \
  -append "console=ttyS0 quiet loglevel=0 panic=-1 mitigations=off canvm_dir=$W ${CANVM_APPEND:-}" </dev/null &
qpid=$!
trap 'got=130; kill -TERM $qpid 2>/dev/null' INT
trap 'got=143; kill -TERM $qpid 2>/dev/null' TERM
trap 'got=129; kill -TERM $qpid 2>/dev/null' HUP
wait "$qpid"; q=$?
while kill -0 "$qpid" 2>/dev/null; do wait "$qpid"; q=$?; done
set -e
[ -n "$got" ] && { echo "canvm: interrupted, VM stopped" >&2; exit "$got"; }
[ $q = 124 ] && { echo "canvm: timed out after ${CANVM_TIMEOUT}s" >&2; exit 124; }
[ -f "$W/rc" ] || { echo "canvm: VM ended without an exit code (qemu rc=$q)" >&2; exit 255; }
exit "$(cat "$W/rc")"
