"""Text files as the readers here take them: UTF-8 (a leading byte-order mark dropped), split into
lines at universal newlines only."""

from __future__ import annotations


def text_lines(text: str) -> list[str]:
    r"""`text` split at \n, \r\n and \r (universal newlines, as open() and readlines() split): never
    at the other characters str.splitlines treats as line breaks (\x0b, \x0c, \x1c-\x1e, \x85,
    \u2028, \u2029), which can be part of a label, a word or a file name."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


class NotUtf8(ValueError):
    """Bytes that are not UTF-8: the 1-based `line` and the offending `raw` bytes, for a message."""

    def __init__(self, line: int, raw: bytes) -> None:
        super().__init__(f"line {line}: bytes {raw!r} are not valid UTF-8")
        self.line, self.raw = line, raw


def utf8_text(data: bytes) -> str:
    """`data` decoded as UTF-8, a leading byte-order mark (Windows editors write one) dropped; else
    NotUtf8 naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotUtf8(data.count(b"\n", 0, exc.start) + 1, data[exc.start : exc.end]) from None
