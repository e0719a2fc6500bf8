"""Process titles: ``prefork: master [name]``, ``prefork: worker [name]``.

``ps`` and ``top`` then tell an operator which process is which.
"""

from __future__ import annotations

import setproctitle


def set_title(role: str, name: str | None = None) -> None:
    """Set this process's title to ``prefork: ROLE [NAME]``."""
    title = f"prefork: {role}"
    if name:
        title += f" [{name}]"
    setproctitle.setproctitle(title)
