"""Text from outside, made safe to print on a terminal or in a text log line."""

from __future__ import annotations

import re

#: Characters a terminal acts on rather than shows: C0 and C1 controls (a line break forges a log line; ESC starts a
#: sequence that can clear the screen, set the window title or plant a hyperlink) and the bidirectional overrides
#: that reorder what is shown.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with every control character shown as its escape (`\\x1b`, `\\n`), so that values from outside
    (task names, errors, worker names: anyone with broker credentials picks them) are read as text, never acted on."""
    return _INVISIBLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)
