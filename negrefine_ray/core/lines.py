"""Lines of a text file as open() reads them: universal newlines only."""

from __future__ import annotations


def text_lines(text: str) -> list[str]:
    r"""`text` split at \n, \r\n and \r (universal newlines, as open() and readlines() split): never
    at the other characters str.splitlines treats as line breaks (\x0b, \x0c, \x1c-\x1e, \x85,
    \u2028, \u2029), which can be part of a label, a word or a file name."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
