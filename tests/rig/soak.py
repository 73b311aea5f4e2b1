"""Soak and fault run: a CAN trace looped through two bridges (bridge/tools/rig/rig.py) while faults are injected on
a schedule; at the end every frame sent is either delivered or accounted for, and the bridges'
memory is compared before and after. Used by benchmarks/soak.py (10 minutes per transport) and, in
a short form, by tests/vcan/test_soak.py.

Faults (each one a function of the rig; the schedule cycles through them):
  kill         SIGKILL the remote bridge, restart it 2 s later
  link         `ip link set veth0 down` on the gateway side for 5 s, then up
  blackhole    netem 100% loss on the gateway's veth for 10 s (a pulled cable that still shows link)
  slow         a TCP client on the gateway's port that completes nothing and never reads, for 10 s
  scan         connect to 20 ports around the bridge's and send garbage; garbage UDP datagrams too

Accounting: frames are counted, not stored (millions of them), on the gateway's vcan0 (sent: the
sender's own loopback copies) and the remote's vcan0 (delivered). Lost = sent - delivered. Counted =
every `dropped{reason}` of both bridges (read with SIGUSR1 at each fault's start and end and at the
end; a remote about to be SIGKILLed is read just before, so its counts outlive it). Uncounted = lost -
counted, per fault window and outside them. The bridges count what they can see (`unacked_at_close`
for TCP, `lost_in_transit` for native UDP, `peer_down`, `no_peer`...); what dies inside a SIGKILLed
process (its socket buffers, and what the gateway sends to it before it is declared down) nobody can
count, so it shows as the kill windows' uncounted frames. Anything uncounted elsewhere is a defect.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from bridge.tools.logs import probe
from bridge.tools.rig.rig import GW_ADDR, TCP_PORT, UDP_PORT, Rig
from bridge.hw import netns

FAULTS = ("kill", "link", "blackhole", "slow", "scan")
READY_LINE = "bus vcan0: channel"  # a bridge's first line once its bus is open (bridge/daemon/app.py)
RSS_SAMPLE_S = 5.0
FAULT_GAP_S = 15.0  # quiet time between faults: the bridges recover, the window closes
RECOVERY_MAX_S = 90.0  # a fault's window stays open until frames flow again, at most this long


@dataclass
class SoakResult:
    transport: str
    seconds: float
    sent: int = 0
    delivered: int = 0
    faults: list = field(default_factory=list)  # (name, start s, end s, sent, delivered, counted during)
    counted_drops: dict = field(default_factory=dict)  # reason -> frames, both bridges at the end
    rss_mb: dict = field(default_factory=dict)  # side -> [(t s, MB)]
    exit_codes: dict = field(default_factory=dict)
    crashed: list = field(default_factory=list)
    recovery_s: list = field(default_factory=list)  # (fault, seconds from its end until frames flowed, None = never)
    # kill faults, split: (seconds from the restart until the new remote had opened its bus (its start-up),
    # then until the gateway heard it (UDP "peer up", TCP "peer is"), then until frames flowed); None = not seen
    kill_phases: list = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.delivered

    def lost_in_windows(self) -> int:
        return sum(s - d for _, _, _, s, d, _c in self.faults)

    @property
    def counted(self) -> int:
        return sum(self.counted_drops.values())

    def uncounted_in(self, kinds) -> int:
        """Frames lost without a counter inside the windows of these fault kinds."""
        return sum(s - d - c for name, _, _, s, d, c in self.faults if name in kinds)

    def uncounted_outside_kills(self) -> int:
        """Lost without a counter anywhere but a kill window (where frames die inside the killed process)."""
        return self.lost - self.counted - self.uncounted_in({"kill"})

    def rss_growth_mb(self, side: str, warmup_frac: float = 0.2) -> float:
        samples = self.rss_mb.get(side, [])
        if len(samples) < 2:
            return 0.0
        t_end = samples[-1][0]
        after = [mb for t, mb in samples if t >= samples[0][0] + warmup_frac * (t_end - samples[0][0])]
        return max(after) - after[0] if after else 0.0

    def summary(self) -> str:
        lines = [f"{self.transport}: {self.seconds:.0f} s, sent {self.sent}, delivered {self.delivered}, "
                 f"lost {self.lost} (inside fault windows {self.lost_in_windows()}), "
                 f"counted drops {self.counted} {json.dumps(self.counted_drops)}",
                 f"  uncounted {self.lost - self.counted}: in kill windows {self.uncounted_in({'kill'})}, "
                 f"elsewhere {self.uncounted_outside_kills()}"]
        for name, t0, t1, s, d, c in self.faults:
            lines.append(f"  fault {name:<9} at {t0:6.1f}-{t1:6.1f} s: sent {s}, delivered {d}, lost {s - d}, "
                         f"counted {c}, uncounted {s - d - c}")
        for side in self.rss_mb:
            samples = self.rss_mb[side]
            lines.append(f"  RSS {side}: {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB "
                         f"(growth after warm-up {self.rss_growth_mb(side):.1f} MB)")
        lines.append(f"  recovery (s after the fault ended until frames flowed): {self.recovery_s}")
        lines.append(f"  kill recovery phases (start-up, +heard by the gateway, +frames flowed; s): {self.kill_phases}")
        lines.append(f"  exit codes {self.exit_codes}; crashed: {self.crashed or 'none'}")
        return "\n".join(lines)


def _heard_count(gateway_log: str) -> int:
    """Times the gateway logged hearing the remote: UDP "peer up", TCP "peer is" (its greeting)."""
    return gateway_log.count("peer up") + gateway_log.count(": peer is ")


def _rss_mb(pid: int) -> float | None:
    try:
        text = open(f"/proc/{pid}/status").read()
    except OSError:
        return None
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else None


def _bridge_pid(proc: subprocess.Popen) -> int:
    """`ip netns exec` execs the bridge: same pid."""
    return proc.pid


class Soak:
    """One transport's soak on a fresh rig. run(frames, seconds, speed) -> SoakResult."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.rig = Rig()
        self.result = SoakResult(transport, 0)
        self.sent = 0
        self.delivered = 0
        self._t0 = 0.0

    # --- faults ---------------------------------------------------------------------------
    def _remote_index(self) -> int:
        return 1

    def fault_kill(self) -> None:
        proc = self.rig.procs[self._remote_index()]
        for key, n in self._side_drops(proc, "remote").items():  # its last counts, before they die with it
            self._dead_drops[key] = self._dead_drops.get(key, 0) + n
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self._wait(2.0)
        self._marks = (self.rig.log_text("remote").count(READY_LINE), _heard_count(self.rig.log_text("gateway")))
        new = self._start_side("remote")  # start_bridge appends it; it replaces the killed one
        self.rig.procs.remove(new)
        self.rig.procs[self._remote_index()] = new

    def fault_link(self) -> None:
        netns.ip("link", "set", "veth0", "down", netns=self.rig.gw)
        self._wait(5.0)
        netns.ip("link", "set", "veth0", "up", netns=self.rig.gw)

    def fault_blackhole(self) -> None:
        tc = ["ip", "netns", "exec", self.rig.gw, "tc", "qdisc"]
        subprocess.run([*tc, "add", "dev", "veth0", "root", "netem", "loss", "100%"], check=True, capture_output=True)
        try:
            self._wait(10.0)
        finally:
            subprocess.run([*tc, "del", "dev", "veth0", "root"], check=True, capture_output=True)

    def fault_slow(self) -> None:
        with netns.inside(self.rig.remote):
            s = socket.create_connection((GW_ADDR, TCP_PORT), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
        try:
            self._wait(10.0)
        finally:
            s.close()

    def fault_scan(self) -> None:
        rnd = random.Random(7)
        with netns.inside(self.rig.remote):
            for port in range(TCP_PORT - 10, TCP_PORT + 10):
                try:
                    s = socket.create_connection((GW_ADDR, port), timeout=1)
                except OSError:
                    continue
                try:
                    s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 3000))))
                except OSError:
                    pass
                s.close()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(50):
                u.sendto(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 1400))), (GW_ADDR, UDP_PORT))
            u.close()
        self._wait(1.0)

    # --- traffic ----------------------------------------------------------------------------
    def _start_side(self, side: str) -> subprocess.Popen:
        from bridge.tools.rig.rig import bridge_args

        return self.rig.start_bridge(side, bridge_args(self.transport, side))

    def _pump(self) -> None:
        buf: list = []
        probe.drain(self.tx, buf, own_only=True)
        self.sent += len(buf)
        buf.clear()
        probe.drain(self.rx, buf)
        self.delivered += len(buf)

    def _wait(self, seconds: float) -> None:
        """Keep replaying while a fault lasts."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._replay_some(min(0.5, end - time.monotonic()))

    def _replay_some(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._next >= len(self.frames):
                self._next = 0
                self._base = time.monotonic()
            ts, raw = self.frames[self._next]
            due = self._base + (ts - self.frames[0][0]) / 1e9 / self.speed
            now = time.monotonic()
            if due > now:
                self._pump()
                time.sleep(min(due - now, 0.002))
                continue
            probe.send(self.tx, raw)
            self._next += 1
            if self._next & 255 == 0:
                self._pump()
            if now - self._last_rss >= RSS_SAMPLE_S:
                self._sample_rss()
        self._pump()

    def _sample_rss(self) -> None:
        self._last_rss = time.monotonic()
        t = self._last_rss - self._t0
        for side, proc in zip(("gateway", "remote"), self.rig.procs):
            if proc.poll() is None and (mb := _rss_mb(_bridge_pid(proc))) is not None:
                key = side if side == "gateway" else f"remote#{self._remote_gen}"
                self.result.rss_mb.setdefault(key, []).append((t, mb))

    def _counters(self, proc: subprocess.Popen, side: str) -> dict:
        before = len(re.findall(r"counters: ", self.rig.log_text(side)))
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = re.findall(r"counters: (\{.*\})", self.rig.log_text(side))
            if len(found) > before:
                return json.loads(found[-1])
            self._replay_some(0.1)
        return {}

    def run(self, frames: list, seconds: float, speed: float = 4.0, faults=FAULTS,
            gap_s: float = FAULT_GAP_S) -> SoakResult:
        """Replay `frames` ((ts_ns, raw), looped) at `speed` for `seconds`, injecting `faults` in
        turn with `gap_s` of quiet before each."""
        self.frames, self.speed = frames, speed
        self._next, self._last_rss, self._remote_gen = 0, 0.0, 0
        self._dead_drops: dict = {}  # drops of remote bridges that were SIGKILLed (read just before)
        with self.rig:
            self.rig.start_pair(self.transport)
            with self.rig.sockets() as (self.tx, self.rx):
                self.rig.wait_path_up(self.tx, self.rx)
                self._t0 = self._base = time.monotonic()
                schedule = [f for f in faults if not (f == "slow" and not self.transport.endswith("tcp"))]
                i = 0
                while time.monotonic() - self._t0 < seconds:
                    self._replay_some(gap_s)
                    if time.monotonic() - self._t0 + 15 >= seconds or not schedule:
                        continue
                    name = schedule[i % len(schedule)]
                    i += 1
                    self._fault(name)
                settle = time.monotonic() + 3
                while time.monotonic() < settle:
                    self._pump()
                    time.sleep(0.05)
                self.result.counted_drops = self._drops()
            for side, proc in zip(("gateway", "remote"), self.rig.procs):
                if proc.poll() is not None and proc.returncode != 0:
                    self.result.crashed.append(f"{side} exited {proc.returncode}")
            codes = self.rig.stop_bridges()
            self.result.exit_codes = dict(zip(("gateway", "remote"), codes))
        self.result.seconds = time.monotonic() - self._t0
        self.result.sent, self.result.delivered = self.sent, self.delivered
        return self.result

    def _fault(self, name: str) -> None:
        c0 = sum(self._drops().values())
        s0, d0, t0 = self.sent, self.delivered, time.monotonic() - self._t0
        getattr(self, f"fault_{name}")()
        if name == "kill":
            self._remote_gen += 1
        # the window closes once frames flow again (reconnect, restart) and what was in flight has landed
        ended, deadline = time.monotonic(), time.monotonic() + RECOVERY_MAX_S
        ready = heard = None
        while time.monotonic() < deadline:
            before = self.delivered
            self._replay_some(0.1 if name == "kill" else 0.5)
            if name == "kill":  # where the time goes: the new process's start-up, or the path after it
                if ready is None and self.rig.log_text("remote").count(READY_LINE) > self._marks[0]:
                    ready = time.monotonic()
                if heard is None and _heard_count(self.rig.log_text("gateway")) > self._marks[1]:
                    heard = time.monotonic()
            if self.delivered > before:
                break
        flowed = time.monotonic()
        recovered = self.delivered > d0 and flowed < deadline
        self.result.recovery_s.append((name, round(flowed - ended, 1) if recovered else None))
        if name == "kill":
            self.result.kill_phases.append(tuple(
                None if t is None else round(t - t_prev, 1)
                for t, t_prev in ((ready, ended), (heard, ready or ended), (flowed if recovered else None,
                                                                           heard or ready or ended))))
        self._replay_some(2.0)
        # counters first: frames sent while they are read belong to the next stretch, not this window
        counted = sum(self._drops().values()) - c0
        self.result.faults.append((name, t0, time.monotonic() - self._t0, self.sent - s0, self.delivered - d0,
                                   counted))

    def _drops(self) -> dict:
        """{"side:reason": frames} over both bridges now, plus the remotes that were killed."""
        total = dict(self._dead_drops)
        for side, proc in zip(("gateway", "remote"), self.rig.procs):
            if proc.poll() is None:
                for key, n in self._side_drops(proc, side).items():
                    total[key] = total.get(key, 0) + n
        return total

    def _side_drops(self, proc: subprocess.Popen, side: str) -> dict:
        total: dict = {}
        for endpoint, snap in self._counters(proc, side).items():
            # only the gateway -> remote path: not the copies a slow client or a scanner was sent
            if not isinstance(snap, dict) or endpoint.endswith("(unidentified clients)") \
                    or ("<-" in endpoint and "peer" not in snap):
                continue
            for reason, n in (snap.get("dropped") or {}).items():
                total[f"{side}:{reason}"] = total.get(f"{side}:{reason}", 0) + n
        return total
