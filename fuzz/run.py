"""Bounded coverage-guided fuzzing of every decoder: each fuzz/fuzz_<target>.py harness in its own
atheris (libFuzzer) subprocess for a fixed time.

    python fuzz/run.py [--seconds N] [--target NAME ...] [--jobs J]

Per target: seeds from fuzz/corpus/<target>/ (read only), new inputs kept in out/fuzz/corpus/<target>/
(libFuzzer writes to the first corpus directory only), the log in out/fuzz/<target>.log, crash /
timeout / oom inputs in out/fuzz/<target>-crash-<sha1> (etc.). Prints executions and the result per
target; exits 1 if any target crashed, hung or failed to start, 2 on usage errors, 0 otherwise - also
when atheris cannot be imported (the optional `fuzz` extra): then it prints that it skipped.
Reproduce a crash: python fuzz/fuzz_<target>.py out/fuzz/<target>-crash-<sha1>
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "fuzz"
RSS_LIMIT_MB = 2048  # per harness process; the decoders need ~50 MB, a leak shows long before this
INPUT_TIMEOUT_S = 10  # one input taking this long is reported as a hang (libFuzzer -timeout)
GRACE_S = 120  # beyond --seconds: startup, corpus loading, final stats; then the run is killed

_COV = re.compile(rb"^#\d+\s+\w+\s+cov: (\d+) ft: \d+ corp: (\d+)", re.M)
_EXECS = re.compile(rb"stat::number_of_executed_units: (\d+)")


def targets() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def run_target(name: str, seconds: int) -> tuple[bool, str]:
    """Fuzz one target for `seconds`; -> (passed, report text)."""
    work = OUT / "corpus" / name
    work.mkdir(parents=True, exist_ok=True)
    log = OUT / f"{name}.log"
    seeds = HERE / "corpus" / name
    cmd = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(work), *([str(seeds)] if seeds.is_dir() else []),
           f"-max_total_time={seconds}", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-timeout={INPUT_TIMEOUT_S}",
           f"-artifact_prefix={OUT}/{name}-", "-print_final_stats=1"]
    start = time.time()
    with open(log, "wb") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE.parent,
                                timeout=seconds + GRACE_S).returncode
        except subprocess.TimeoutExpired:
            rc = None
    text = log.read_bytes()
    execs = _EXECS.search(text)
    cov = _COV.findall(text)
    stats = f"{int(execs[1]) if execs else 0} execs in {time.time() - start:.0f} s"
    if cov:
        stats += f", cov {int(cov[-1][0])}, corpus {int(cov[-1][1])}"
    if rc == 0:
        return True, f"fuzz: {name}: ok ({stats})"
    artifacts = sorted(str(p.relative_to(HERE.parent)) for p in OUT.glob(f"{name}-*")
                       if p.stat().st_mtime >= start - 1)
    what = f"killed after {seconds + GRACE_S} s" if rc is None else f"exit {rc}"
    lines = [f"fuzz: {name}: FAILED ({what}; {stats}); log {log.relative_to(HERE.parent)}"]
    lines += [f"fuzz:   input: {a}  (reproduce: python fuzz/fuzz_{name}.py {a})" for a in artifacts]
    lines += ["fuzz:   " + ln for ln in excerpt(text)]
    return False, "\n".join(lines)


def excerpt(text: bytes, limit: int = 40) -> list[str]:
    """The Python traceback atheris printed (or libFuzzer's error lines), at most `limit` lines."""
    lines = text.decode("utf-8", "replace").splitlines()
    for i, ln in enumerate(lines):
        if "Uncaught Python exception" in ln or "ERROR: libFuzzer" in ln:
            return [ln[:200] for ln in lines[i : i + limit]]
    return [ln[:200] for ln in lines[-limit:]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fuzz/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="fuzzing time per target (default 20)")
    ap.add_argument("--target", action="append", choices=targets(), metavar="NAME",
                    help=f"only this target (repeatable): {', '.join(targets())}")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="targets fuzzed at the same time (default: 2, or 1 on a single CPU)")
    args = ap.parse_args(argv)
    if args.seconds < 1 or args.jobs < 1:
        ap.error("--seconds and --jobs must be >= 1")
    try:
        import atheris  # noqa: F401
    except ImportError as e:
        print(f"fuzz: atheris not installed: skipped ({e}; pip install -e '.[fuzz]')")
        return 0
    names = args.target or targets()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"fuzz: {len(names)} targets, {args.seconds} s each, {args.jobs} at a time; output in {OUT}",
          flush=True)
    failed = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(run_target, name, args.seconds) for name in names}
        for name, fut in futures.items():
            ok, report = fut.result()
            print(report, flush=True)
            if not ok:
                failed.append(name)
    print(f"fuzz: {len(names) - len(failed)} of {len(names)} targets passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
