"""`bimguard completion bash`: a bash completion script for every command and flag.

    source <(bimguard completion bash)            # this shell
    bimguard completion bash > /etc/bash_completion.d/bimguard

zsh reads it after `autoload -U bashcompinit && bashcompinit`. The script is generated from the
CLI's own parser, so it lists exactly the commands and flags this version has; after a flag that
takes a value, the shell completes file names.
"""

from __future__ import annotations

import argparse
import shlex


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash",), help="the shell to write the script for (zsh: see above)")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser by its path: () is the top level."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*path, name)))
    return found


def bash_script(parser: argparse.ArgumentParser) -> str:
    cases = []
    for path, p in sorted(_commands(parser).items(), key=lambda kv: -len(kv[0])):  # "sim serve" before "sim"
        words, values = [o for a in p._actions for o in a.option_strings], []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                words = [*action.choices, *words]
            elif action.option_strings and action.choices:
                values.append(f"{'|'.join(action.option_strings)}) "
                              f"COMPREPLY=($(compgen -W {shlex.quote(' '.join(map(str, action.choices)))} -- \"$cur\")); return ;;")
            elif action.option_strings and action.nargs != 0:
                values.append(f"{'|'.join(action.option_strings)}) COMPREPLY=(); return ;;")  # bash: file names
        pattern = '*" ' + " ".join(path) + ' "*' if path else "*"
        prev = f' case "$prev" in {" ".join(values)} esac;' if values else ""
        cases.append(f"    {pattern}){prev} opts={shlex.quote(' '.join(words))} ;;")
    return "\n".join([
        "# bash completion for bimguard (bimguard completion bash)",
        "_bimguard() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" opts',
        '    local line=" ${COMP_WORDS[*]:1:COMP_CWORD-1} "',
        '    case "$line" in',
        *cases,
        "    esac",
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "}",
        "complete -o default -F _bimguard bimguard kubectl-bimguard",
        "",
    ])


def run(args: argparse.Namespace) -> int:
    from jobs.cli import build_parser

    print(bash_script(build_parser()), end="")
    return 0
