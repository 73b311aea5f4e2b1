"""`bridge.hw` is the top-level hw/ folder (the kernel and hardware side, the lowest layer; see its own
__init__.py). In a source checkout this file points the package's path there, so the folder stays where
the project's layout puts it; the wheel installs hw/ itself as bridge/hw (pyproject.toml: force-include)
and does not ship this file, so an installed canbridge adds no top-level `hw` package that could clash.
Import it as `bridge.hw.<module>`, never as `hw.<module>` (tests/test_layers.py checks)."""

import os

__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hw")]
