"""Summarise py-spy's collapsed stacks (`py-spy record --format raw`, as benchmarks/hops.py writes them):
per function, the share of samples spent in it (self) and under it (inclusive).

    python benchmarks/stacks.py out/hops-canbridge-tcp-A-1inflight.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for anchor in ("/bridge/", "/hw/", "/lib/python3"):
        if anchor in path:
            path = anchor.strip("/") + "/" + path.split(anchor, 1)[1] if anchor != "/lib/python3" else "stdlib"
            break
    return f"{m['func']} ({path})"


def summarise(path: Path, top: int) -> str:
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("<module>") and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{path.name}: {total} samples (idle left out)"]
    out.append("  self %   incl %  function")
    for func, _ in incl.most_common(top):
        out.append(f"  {100 * own[func] / total:6.1f}  {100 * incl[func] / total:6.1f}  {func}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    for f in args.files:
        print(summarise(f, args.top))


if __name__ == "__main__":
    main()
