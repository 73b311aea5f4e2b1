"""Frames in files and on a bus with their timing: log files in every format python-can knows
(`logfiles`), `canbridge replay`, the probe that replays, records and compares frames for the demo,
tests and benchmarks (`probe`), and the progress line of long work (`progress`).

The bottom room of bridge/tools/: imports no other room of it."""
