"""The repair's progress: a live view redrawn in place on a terminal, plain lines otherwise, JSON
lines for a Job's logs (jobs/repair.py _Progress), rendered by a terminal emulator of our own:
each cursor-up/clear sequence is applied to a screen, which must then show one row per disk."""

from __future__ import annotations

import io
import json
import re

from jobs.repair import _Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """Apply the output to a screen: text, newlines, ESC[nF (n lines up, column 0), ESC[J."""
        lines: list[str] = [""]
        row = 0
        for token in re.split(r"(\x1b\[\d*F|\x1b\[J|\n)", self.getvalue()):
            if m := re.fullmatch(r"\x1b\[(\d*)F", token):
                row = max(0, row - int(m[1] or 1))
            elif token == "\x1b[J":
                del lines[row + 1:]
                lines[row] = ""
            elif token == "\n":
                row += 1
                if row == len(lines):
                    lines.append("")
            elif token:
                lines[row] += token
        return [line for line in lines if line]


def test_on_a_terminal_one_row_per_disk_redrawn_in_place() -> None:
    tty = Terminal()
    p = _Progress(tty, "text", 0.0)
    p.line("w1/d1", "Pending", "recorded")
    p.line("w2/d1", "Pending", "recorded")
    p.line("w1/d1", "Draining", "request Longhorn's eviction of the disk")
    p.line("w1/d1", "Done", "verified")
    screen = tty.screen()
    assert len(screen) == 2
    assert screen[0].split()[1:3] == ["w1/d1", "Done"] and screen[1].split()[1:3] == ["w2/d1", "Pending"]


def test_elsewhere_a_line_per_step_and_json_for_a_job() -> None:
    plain, js = io.StringIO(), io.StringIO()
    for out, fmt in ((plain, "text"), (js, "json")):
        p = _Progress(out, fmt, 0.0)
        p.line("w1/d1", "Pending", "recorded")
        p.line("w1/d1", "Done", "verified")
    assert "\x1b" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 2
    assert [json.loads(x)["phase"] for x in js.getvalue().splitlines()] == ["Pending", "Done"]
