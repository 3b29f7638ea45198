"""Griffe extension: a docstring's `Usage:` block (the commands' modules end with one) becomes a
code block in the API reference.

Left as it is, Markdown reads its indented command lines as a paragraph, and option lists such
as `[--figures DIR] [--json OUT]` as reference links, which the strict build refuses as broken
cross-references. The docstrings stay plain text for `--help` and `pydoc`; only the site
changes.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from griffe import Extension, Object

# "Usage:" on its own line, then the indented lines under it (up to the first unindented line)
USAGE = re.compile(r"^Usage:\n((?:[ \t]+\S.*(?:\n|$))+)", re.MULTILINE)


def _as_code(match: re.Match[str]) -> str:
    return "Usage:\n\n```bash\n" + textwrap.dedent(match.group(1)).rstrip("\n") + "\n```\n"


class UsageAsCode(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = USAGE.sub(_as_code, obj.docstring.value)
