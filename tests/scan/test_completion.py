"""`bimguard completion bash`, sourced into a real bash and asked as the shell asks on Tab."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def complete(script: str, *words: str) -> list[str]:
    """What Tab offers after `words` (the last one is being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = f'{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _bimguard; printf "%s\\n" "${{COMPREPLY[@]}}"'
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                         timeout=30, check=True)
    return [w for w in out.stdout.splitlines() if w]


# bash is the system's, not the test extra's: the script is for bash, and some systems lack it.
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_tab_offers_commands_flags_and_choices() -> None:
    script = subprocess.run([str(BIN / "bimguard"), "completion", "bash"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert complete(script, "bimguard", "re") == ["repair", "rewrite-cfg"]
    assert complete(script, "bimguard", "sim", "") == ["serve", "-h", "--help"]
    assert complete(script, "bimguard", "repair", "--ev") == ["--evict"]
    assert complete(script, "bimguard", "sim", "serve", "--with") == ["--with-bimguard"]
    assert complete(script, "kubectl-bimguard", "scan", "-o", "") == ["table", "json", "yaml"]
    assert complete(script, "bimguard", "scan", "--from-dump", "") == []  # file names, from bash itself
    assert "--apply" not in complete(script, "bimguard", "scan", "--")  # each command's own flags
