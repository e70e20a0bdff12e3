"""A rich console that does not cut tables when the output is piped."""

from __future__ import annotations

import os
from typing import Any

#: width of a piped console (not a terminal, no COLUMNS): rich's 80 cut the demo's table
PIPED_WIDTH = 200


def console(**kwargs: Any) -> Any:
    """``rich.console.Console``; piped to a file or another program (not a terminal) it is
    ``PIPED_WIDTH`` columns wide unless ``COLUMNS`` says otherwise, so tables are whole."""
    from rich.console import Console

    c = Console(**kwargs)
    if not c.is_terminal and "COLUMNS" not in os.environ and "width" not in kwargs:
        c = Console(width=PIPED_WIDTH, **kwargs)
    return c
