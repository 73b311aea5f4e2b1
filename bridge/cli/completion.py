"""`canbridge completion bash|zsh`: a static shell completion script, generated from the argparse
parsers of every subcommand (no runtime dependency, nothing runs at <TAB> but the shell).

    canbridge completion bash > ~/.local/share/bash-completion/completions/canbridge
    canbridge completion zsh > "${fpath[1]}/_canbridge"      # or: source <(canbridge completion zsh)

Completed: subcommands, each subcommand's options, option values with choices (`dump -t a|d|z|A`),
sub-subcommands (`link list|show|...`), CAN/network interface names (from /sys/class/net) and files
for positional arguments and option values.

A parser is captured by calling the subcommand's main([]) with ArgumentParser.parse_args replaced by
a function that raises with the parser: every subcommand parses its arguments before doing anything.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh")


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


@dataclass
class Command:
    """What the shell needs of one (sub)command. options: [(flags, takes_value, choices, help)];
    words: sub-subcommand names (argparse subparsers) offered as positional arguments."""

    name: str
    options: list = field(default_factory=list)
    words: list = field(default_factory=list)


def capture(entry: str) -> argparse.ArgumentParser | None:
    """The parser that "module:function"(argv) builds, or None if it did something else first."""
    module, _, func = entry.partition(":")

    def grab(self, *args, **kwargs):
        raise _Captured(self)

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = grab
    try:
        getattr(importlib.import_module(module), func)([])
    except _Captured as got:
        return got.parser
    except BaseException:  # noqa: BLE001 - a subcommand that cannot be introspected gets no options
        return None
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved
    return None


def describe(name: str, parser: argparse.ArgumentParser | None) -> Command:
    cmd = Command(name)
    if parser is None:
        cmd.options.append((["-h", "--help"], False, None, "show help"))
        return cmd
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            cmd.words += list(action.choices)
        elif action.option_strings:
            choices = [str(c) for c in action.choices] if action.choices else None
            if choices is None and _is_iface(action):
                choices = IFACES
            cmd.options.append((list(action.option_strings), action.nargs != 0, choices, _help(action)))
        elif action.choices:
            cmd.words += [str(c) for c in action.choices]
    return cmd


IFACES = ["$IFACES"]  # placeholder for "the interfaces in /sys/class/net", expanded by each shell


def _is_iface(action: argparse.Action) -> bool:
    names = f"{action.dest} {action.metavar or ''}".lower()
    return "iface" in names or "interface" in names


def _help(action: argparse.Action) -> str:
    text = (action.help or "").split("(")[0].strip() or action.dest
    return "".join(c if c.isalnum() or c in " ,.-/_+" else " " for c in text)[:60].strip()


def commands(subcommands: dict[str, str], top: argparse.ArgumentParser, run: argparse.ArgumentParser) -> list:
    """Command list: "" (the bridge itself: `canbridge IFACE... PEER...`), run, completion, every subcommand."""
    out = [describe("", top), describe("run", run)]
    out.append(Command("completion", [(["-h", "--help"], False, None, "show help")], list(SHELLS)))
    out += [describe(name, capture(entry)) for name, entry in sorted(subcommands.items())]
    return out


# ---------------------------------------------------------------------------------------------- bash


def _bash_case(cmd: Command) -> str:
    opts = " ".join(f for flags, *_ in cmd.options for f in flags)
    values = []
    for flags, takes_value, choices, _ in cmd.options:
        if not takes_value:
            continue
        words = " ".join(choices).replace(IFACES[0], "$ifaces") if choices else ""
        reply = f'$(compgen -W "{words}" -- "$cur")' if choices else '$(compgen -f -- "$cur")'
        values.append(f"            {'|'.join(flags)}) COMPREPLY=( {reply} ); return 0;;")
    value_case = "\n".join(["        case $prev in", *values, "        esac"]) if values else ""
    return (f"    {cmd.name or '*'})\n        opts=\"{opts}\"\n        words=\"{' '.join(cmd.words)}\"\n"
            f"{value_case}\n        ;;")


def bash(cmds: list[Command], version: str) -> str:
    subs = " ".join(c.name for c in cmds if c.name)
    top = next(c for c in cmds if not c.name)
    top_opts = " ".join(f for flags, *_ in top.options for f in flags)
    cases = "\n".join(_bash_case(c) for c in cmds if c.name) + "\n" + _bash_case(top)
    return f"""# bash completion for canbridge {version} (generated by `canbridge completion bash`)
# install: canbridge completion bash > ~/.local/share/bash-completion/completions/canbridge
_canbridge() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} sub=${{COMP_WORDS[1]}}
    local opts words ifaces
    ifaces=$(command ls /sys/class/net 2>/dev/null)
    COMPREPLY=()
    if (( COMP_CWORD == 1 )); then
        COMPREPLY=( $(compgen -W "{subs} {top_opts} $ifaces" -- "$cur") )
        return 0
    fi
    case $sub in
{cases}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$words $ifaces" -- "$cur") $(compgen -f -- "$cur") )
    fi
    return 0
}}
complete -F _canbridge canbridge
"""


# ----------------------------------------------------------------------------------------------- zsh


def _zsh_specs(cmd: Command) -> list[str]:
    specs = []
    for flags, takes_value, choices, text in cmd.options:
        if choices == IFACES:
            value = ":interface:_canbridge_ifaces"
        else:
            value = f":value:({' '.join(choices)})" if choices else ":value:_files"
        value = value if takes_value else ""
        specs += [f"'{flag}[{text}]{value}'" for flag in flags]
    words = f"(({' '.join(cmd.words)}))" if cmd.words else ""
    specs.append(f"'*:argument:_canbridge_positional {words}'" if words else "'*:argument:_canbridge_positional'")
    return specs


def zsh(cmds: list[Command], version: str) -> str:
    subs = " ".join(c.name for c in cmds if c.name)
    top = next(c for c in cmds if not c.name)
    cases = []
    for cmd in cmds:
        if cmd.name:
            specs = " \\\n                ".join(_zsh_specs(cmd))
            cases.append(f"        {cmd.name}) _arguments -s \\\n                {specs} ;;")
    top_specs = " \\\n                ".join(_zsh_specs(top))
    return f"""#compdef canbridge
# zsh completion for canbridge {version} (generated by `canbridge completion zsh`)
# install: canbridge completion zsh > "${{fpath[1]}}/_canbridge"   (or: source <(canbridge completion zsh))

_canbridge_ifaces() {{
    _values interface $(command ls /sys/class/net 2>/dev/null)
}}

_canbridge_positional() {{
    local -a extra
    extra=(${{(z)1}})
    _alternative "interfaces:interface:($(command ls /sys/class/net 2>/dev/null))" 'files:file:_files' \\
        ${{extra:+"subcommands:subcommand:${{1}}"}}
}}

_canbridge() {{
    if (( CURRENT == 2 )); then
        _alternative 'subcommands:subcommand:({subs})' \\
            "interfaces:interface:($(command ls /sys/class/net 2>/dev/null))" \\
            'options:option:({" ".join(f for flags, *_ in top.options for f in flags)})'
        return
    fi
    case $words[2] in
{chr(10).join(cases)}
        *) _arguments -s \\
                {top_specs} ;;
    esac
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _canbridge "$@"
else
    compdef _canbridge canbridge
fi
"""


def main(argv: list[str], subcommands: dict[str, str], top: argparse.ArgumentParser,
         run: argparse.ArgumentParser) -> int:
    """argv: [SHELL]; subcommands: bridge.cli.main.SUBCOMMANDS; top, run: the bridge's own parsers."""
    from bridge import __version__

    p = argparse.ArgumentParser(prog="canbridge completion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS)
    args = p.parse_args(argv)
    cmds = commands(subcommands, top, run)
    sys.stdout.write((bash if args.shell == "bash" else zsh)(cmds, __version__))
    return 0
