"""An incremental Server-Sent Events parser: bytes in any chunking → the same events.

Follows the WHATWG "event stream interpretation" rules, which is what OpenAI-compatible
servers (OpenAI, Ollama, vLLM, llama.cpp) speak for `stream: true`:

- UTF-8, decoded incrementally (a character split across reads is fine; invalid bytes
  become U+FFFD); one leading byte-order mark is dropped.
- Lines end with CRLF, LF or CR, and a CRLF split across two reads is still one line end.
- `field: value` lines (one space after the colon is dropped), a line without a colon is a
  field with an empty value, lines starting with `:` are comments (keep-alives).
- `data` lines accumulate (joined with LF); a blank line dispatches the event; an event
  with no data is not dispatched. `event`, `id` (no NUL) and `retry` (digits only) are
  kept; unknown fields are ignored.
- `[DONE]` is an ordinary event here: `SSEEvent.is_done` tells it.

Sizes are bounded so a hostile or broken upstream cannot grow memory without limit: a line
longer than `max_line` characters, or an event whose data passes `max_event`, raises
`SSEError`. Nothing here does I/O.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

MAX_LINE = 1 << 20  # characters in one line
MAX_EVENT = 4 << 20  # characters of data in one event

_LINE_END = re.compile(r"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")


class SSEError(ValueError):
    """The stream breaks the parser's limits; the rest of it cannot be trusted."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None  # the last event id in force when this event was dispatched
    retry: int | None = None  # the reconnection time the stream asked for, if any

    @property
    def is_done(self) -> bool:
        """OpenAI's end-of-stream marker, `data: [DONE]`."""
        return self.data.strip() == "[DONE]"


class SSEParser:
    """Feed it bytes as they come; it returns the events completed by each feed."""

    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._partial: list[str] = []  # the unfinished line, in pieces
        self._partial_len = 0
        self._data: list[str] = []
        self._data_len = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._line_pending = False  # a complete line was read since the last dispatch
        self.comments = 0  # comment lines seen (keep-alives)
        self.bytes_in = 0

    # ------------------------------------------------------------------ input
    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self.bytes_in += len(chunk)
        return self._text(self._decoder.decode(chunk))

    def finish(self) -> list[SSEEvent]:
        """End of stream. A last event whose lines were all complete but that missed its
        blank line is dispatched (lenient: some servers end with `data: [DONE]\\n`); an
        unfinished line is dropped, as the standard says."""
        events = self._text(self._decoder.decode(b"", final=True))
        self._partial.clear()
        self._partial_len = 0
        if self._line_pending:
            event = self._dispatch()
            if event is not None:
                events.append(event)
        return events

    # ------------------------------------------------------------------ lines
    def _text(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        events: list[SSEEvent] = []
        pos = 0
        for match in _LINE_END.finditer(text):
            piece = text[pos:match.start()]
            if self._partial:
                self._partial.append(piece)
                line = "".join(self._partial)
                self._partial.clear()
                self._partial_len = 0
            else:
                line = piece
            if len(line) > self.max_line:
                raise SSEError(f"a line of the event stream is longer than {self.max_line}")
            event = self._line(line)
            if event is not None:
                events.append(event)
            pos = match.end()
        if pos < len(text):
            rest = text[pos:]
            self._partial.append(rest)
            self._partial_len += len(rest)
            if self._partial_len > self.max_line:
                raise SSEError(f"a line of the event stream is longer than {self.max_line}")
        elif text[-1] == "\r":
            self._skip_lf = True
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._line_pending = True
        if name == "data":
            self._data_len += len(value) + 1
            if self._data_len > self.max_event:
                raise SSEError(f"an event of the event stream is larger than {self.max_event}")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if _DIGITS.fullmatch(value):
                self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        self._line_pending = False
        data, event = self._data, self._event
        self._data, self._data_len, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self._last_id, self._retry)
