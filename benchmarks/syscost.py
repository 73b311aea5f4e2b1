"""What one call on the forwarding path costs, from Python, here (run it in the test VM: clocks and
system calls are what TCG makes expensive).

    python -m bridge.hw.testvm --vcan 2 -- .venv/bin/python benchmarks/syscost.py

Each figure is the median over 7 rounds of the mean wall time per call (microseconds); the speed index
of benchmarks/throughput.py is printed first, to compare runs.
"""

from __future__ import annotations

import select
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.codec.socketcan import pack_can  # noqa: E402
from bridge.hw import mmsg  # noqa: E402
from bridge.hw.cansock import open_can_raw  # noqa: E402

N = 2000
_ANC = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)


def timed(fn, n: int = N, setup=None) -> float:
    rounds = []
    for _ in range(7):
        if setup:
            setup(n)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


def main() -> None:
    t = time.perf_counter()
    sum(i * i for i in range(200_000))
    print(f"speed index {(time.perf_counter() - t) * 1e3:.0f} ms", flush=True)
    rows = []
    rows.append(("Python: empty function call", timed(lambda: None)))
    rows.append(("time.monotonic()", timed(time.monotonic)))
    rows.append(("time.time_ns()", timed(time.time_ns)))
    ep = select.epoll()
    r, w = socket.socketpair()
    w.send(b"x")
    ep.register(r.fileno(), select.EPOLLIN)
    rows.append(("epoll.poll(0) with one fd ready", timed(lambda: ep.poll(0))))
    rows.append(("epoll.poll(-1) with one fd ready", timed(lambda: ep.poll(-1))))
    rows.append(("epoll.poll(0.5) with one fd ready", timed(lambda: ep.poll(0.5))))
    ep2 = select.epoll()
    rows.append(("epoll.poll(0), nothing ready", timed(lambda: ep2.poll(0))))

    if Path("/sys/class/net/vcan0").exists():
        tx = open_can_raw("vcan0")
        rx = open_can_raw("vcan0", rxq_ovfl=True, rcvbuf=64 << 20)
        rx.setblocking(False)
        frame = pack_can(0x123, b"12345678")

        def fill(n):
            for _ in range(n):
                while True:
                    try:
                        tx.send(frame)
                        break
                    except OSError:
                        time.sleep(0.001)
            time.sleep(0.05)

        rows.append(("CAN send() one frame (vcan0, one reader)", timed(lambda: tx.send(frame), 500,
                                                                         setup=lambda n: drain(rx))))
        drain(rx)
        rows.append(("CAN recvmsg() one frame + 2 cmsgs", timed(lambda: rx.recvmsg(72, _ANC), 500, setup=fill)))
        one = mmsg.Receiver(1, 72)  # one slot: one frame per call, as on a quiet bus
        fd = rx.fileno()
        rows.append(("ctypes recvmmsg (Receiver.recv), one frame", timed(lambda: one.recv(fd), 500, setup=fill)))
        drain(rx)
        receiver = mmsg.Receiver(64, 72)
        rows.append(("ctypes recvmmsg, nothing waiting (EAGAIN)", timed(lambda: receiver.recv(fd))))
        sender = mmsg.Sender(64, 16)
        txfd = tx.fileno()
        rows.append(("ctypes sendmmsg, one frame", timed(lambda: sender.send(txfd, [frame]), 500,
                                                         setup=lambda n: drain(rx))))
        drain(rx)
        tx.close()
        rx.close()

    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.setblocking(False)
    s.setblocking(False)
    payload = b"x" * 24
    rows.append(("TCP send() 24 bytes on lo (NODELAY)", timed(lambda: c.send(payload), 500,
                                                             setup=lambda n: drain(s))))
    drain(s)

    rows.append(("TCP recv(), nothing waiting (EAGAIN)", timed(lambda: try_recv(s))))
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0))
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2.bind(("127.0.0.1", 0))
    u2.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    u2.setblocking(False)
    dst = u2.getsockname()
    rows.append(("UDP sendto() 40 bytes on lo", timed(lambda: u1.sendto(payload + payload[:16], dst), 500,
                                                      setup=lambda n: drain(u2))))

    def udp_fill(n):
        drain(u2)
        for _ in range(n):
            u1.sendto(payload, dst)
        time.sleep(0.05)

    rows.append(("UDP recvfrom() one datagram waiting", timed(lambda: u2.recvfrom(65535), 500, setup=udp_fill)))
    drain(u2)
    rows.append(("UDP recvfrom(), nothing waiting (EAGAIN)", timed(lambda: try_recv(u2))))
    for name, us in rows:
        print(f"  {us:8.2f} us  {name}")


def try_recv(sock):
    try:
        sock.recv(65535)
    except BlockingIOError:
        pass


def drain(sock, *_):
    sock.setblocking(False)
    while True:
        try:
            sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return


if __name__ == "__main__":
    main()
