"""Shell completion (`canbridge completion bash|zsh`, bridge/cli/completion.py) in real shells: bash runs
the completion function as readline would; zsh completes in an interactive shell on a pseudo-terminal (zpty)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _script(shell: str) -> str:
    out = subprocess.run([sys.executable, "-m", "bridge", "completion", shell], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bash") / "canbridge"
    path.write_text(_script("bash"))
    return path


def _bash(script: Path, *words: str) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed)."""
    array = " ".join(f"'{w}'" for w in words)
    cmd = f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _canbridge; " \
          'printf "%s\\n" "${COMPREPLY[@]}"'
    out = subprocess.run(["bash", "--norc", "-c", cmd], capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_subcommands_options_and_values(bash_script):
    assert {"dump", "demo"} <= set(_bash(bash_script, "canbridge", "d"))
    assert "lo" in _bash(bash_script, "canbridge", "l")  # interfaces: the common case `canbridge IFACE PEER`
    dump_opts = set(_bash(bash_script, "canbridge", "dump", "-"))
    assert {"-t", "-L", "-l", "-f", "-s", "-H", "-r", "-D", "-n", "-x"} <= dump_opts
    assert _bash(bash_script, "canbridge", "dump", "-t", "") == ["a", "d", "z", "A"]
    assert _bash(bash_script, "canbridge", "dump", "-s", "") == ["0", "1", "2"]
    assert "lo" in _bash(bash_script, "canbridge", "dump", "")
    assert _bash(bash_script, "canbridge", "completion", "")[:2] == ["bash", "zsh"]  # then interfaces, files
    assert "--log-format" in _bash(bash_script, "canbridge", "run", "--l")
    assert _bash(bash_script, "canbridge", "run", "--log-format", "") == ["text", "json"]
    assert _bash(bash_script, "canbridge", "capture", "-i", "l") == ["lo"]
    assert "--quiet" in _bash(bash_script, "canbridge", "replay", "--")


def test_bash_link_subcommands(bash_script):
    words = set(_bash(bash_script, "canbridge", "link", ""))
    assert {"list", "show"} <= words, words


ZPTY = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z 'PS1="> "; fpath=(DIR $fpath); autoload -U compinit; compinit -u -D; LISTMAX=1000'
zpty -w -n z $'LINE\t'
sleep 3
out=""
while zpty -r -t z chunk; do out+=$chunk; done
print -r -- "$out"
zpty -d z
"""


def _zsh(tmp_path: Path, line: str) -> str:
    (tmp_path / "_canbridge").write_text(_script("zsh"))
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZPTY.replace("DIR", str(tmp_path)).replace("LINE", line))
    out = subprocess.run(["zsh", "-f", str(driver)], capture_output=True, text=True, timeout=60)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", " ", out.stdout)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completes_option_values_and_options(tmp_path):
    listing = _zsh(tmp_path, "canbridge dump -t ")
    assert re.search(r"\bA\s+a\s+d\s+z\b", listing), listing
    listing = _zsh(tmp_path, "canbridge dump -")
    assert all(re.search(rf"(^|\s){re.escape(o)}\b", listing) for o in ("-H", "-l", "-f", "-D")), listing


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_script_is_valid_and_sourceable(tmp_path):
    path = tmp_path / "canbridge.zsh"
    path.write_text(_script("zsh"))
    out = subprocess.run(["zsh", "-f", "-c", f"autoload -U compinit; compinit -u -D; source {path}; "
                          "print ${_comps[canbridge]}"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "_canbridge", out.stderr
