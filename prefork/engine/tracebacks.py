"""The user's part of a traceback: the frames of their code, without prefork's or importlib's.

A worker that fails to boot, and the command that cannot import an application,
show the user where *their* code failed, not the machinery that called it.
"""

from __future__ import annotations

import importlib
import os
import traceback

__all__ = ["user_traceback"]


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without prefork's and importlib's frames ('' if none is left)."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not _is_machinery(frame.filename)
    ]
    if not frames and not isinstance(exc, SyntaxError):
        return ""
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


#: prefork's own directory and the import system's: frames there are not the user's.
_MACHINERY_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(importlib.__file__ or "")) + os.sep,
)


def _is_machinery(filename: str) -> bool:
    """A frame of prefork itself or of the import system, not of the user's code."""
    return filename.startswith(_MACHINERY_DIRS) or filename.startswith("<frozen importlib")
