"""longhorn-manager log lines in logrus' text format, kept per simulated manager.

The product's scanner reads these lines from support bundles, so the emulator writes them the way
logrus' TextFormatter does (keys after ``time, level, msg, func, file`` sorted; values quoted with
Go ``%q`` when they contain characters outside ``[A-Za-z0-9-._/@^+]``); see
the collision sample's ``longhorn-manager-log-excerpt.txt`` (tests/fixtures/longhorn/samples/collision/).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from bimguard.sim.clock import SimClock

_PLAIN = re.compile(r"^[A-Za-z0-9\-._/@^+]+$")


def _q(value: str) -> str:
    return value if _PLAIN.match(value) else json.dumps(value, ensure_ascii=False)


def logrus_line(level: str, msg: str, func: str, file: str, **fields: Any) -> str:
    head = [f"time={_q(SimClock.now_rfc3339())}", f"level={level}", f"msg={_q(msg)}", f"func={_q(func)}", f"file={_q(file)}"]
    tail = [f"{k}={_q(str(fields[k]))}" for k in sorted(fields)]
    return " ".join(head + tail)


class ManagerLog:
    """The log of one simulated longhorn-manager pod: Python logging plus an in-memory copy."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.lines: list[str] = []
        self._logger = logging.getLogger(f"bimguard.sim.longhorn.manager.{node}")

    def emit(self, level: str, msg: str, func: str, file: str, **fields: Any) -> str:
        fields.setdefault("node", self.node)
        line = logrus_line(level, msg, func, file, **fields)
        self.lines.append(line)
        if len(self.lines) > 10000:
            del self.lines[:5000]
        self._logger.log(logging.ERROR if level == "error" else logging.WARNING if level == "warning" else logging.INFO, "%s", line)
        return line

    def panic(self, message: str, func: str, where: str) -> None:
        """What a Go panic leaves in the pod's log before the process exits."""
        for line in (f"panic: {message} [recovered]", f"\tpanic: {message}",
                     "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]", "",
                     f"github.com/longhorn/longhorn-manager/{func}(...)",
                     f"\t/go/src/github.com/longhorn/longhorn-manager/controller/{where}"):
            self.lines.append(line)
        self._logger.error("longhorn-manager %s panicked: %s at %s", self.node, message, where)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)
