"""Text from files a stranger wrote, made safe to print on a terminal.

A patch manifest (or any file) may carry terminal control sequences in its strings: an OSC sequence
sets the window title or writes to the clipboard, CSI sequences move the cursor or clear the screen,
and Unicode direction overrides reorder what is shown. :func:`printable` removes all of them, whether
the output is a terminal or a pipe (a pipe's reader may be one later).
"""

from __future__ import annotations

import re

#: string commands (OSC, DCS, SOS, PM, APC) up to their terminator (BEL or ST) or the end of the text
_STRING_COMMAND = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
#: control sequences (CSI, 7-bit or 8-bit) and the other two- or three-character escape sequences
_CONTROL_SEQUENCE = r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|\x1b[ -/]*[0-~]?"
_ESCAPES = re.compile(f"{_STRING_COMMAND}|{_CONTROL_SEQUENCE}")
#: what is left: C0 and C1 controls, DEL, and the Unicode marks and overrides that reorder text
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``str(text)`` without escape sequences and control characters (tabs and newlines become spaces)."""
    s = _ESCAPES.sub("", str(text))
    s = s.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return _CONTROLS.sub("", s)
