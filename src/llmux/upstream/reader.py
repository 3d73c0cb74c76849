"""A sans-I/O HTTP/1.1 response reader: bytes in, a response head and body chunks out.

It owns no socket (the pool feeds it what it reads). It follows h11's grammar and framing rules
(content-length, chunked with trailers, close-delimited, 1xx, HEAD/204/304), checked against
h11 by a property test at arbitrary byte boundaries, and fails closed: anything it does not
understand is a `MalformedResponse`. See docs/upstream-client.md.
"""

from __future__ import annotations

import re

# A response head (or chunk-size line, or trailer section) still incomplete at this size is
# refused, as h11's default `max_incomplete_event_size` did.
MAX_HEAD_BYTES = 16384

# Framing is the pool's job: a caller-supplied value could desynchronise the connection.
_FRAMING_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})

# The grammar is h11's (RFC 9110/9112 as h11 reads them), so both accept the same responses.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD_VALUE = rb"(?:" + _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR + rb"+)*)?"
_FIELD_LINE = rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*"
_FIELD_LINE_NO_GROUPS = _TOKEN + rb":[ \t]*" + _FIELD_VALUE + rb"[ \t]*"
_STATUS_LINE = rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|" + _FIELD_VCHAR + rb")*))?"
# A whole head in one match (status line, then header lines, each ended by LF or CRLF), so
# the common case costs two regex passes in C rather than one per line.
_HEAD_RE = re.compile(_STATUS_LINE + rb"\r?\n((?:" + _FIELD_LINE_NO_GROUPS + rb"\r?\n)*)")
_FIELDS_RE = re.compile(_FIELD_LINE + rb"\r?\n")
_STATUS_LINE_RE = re.compile(_STATUS_LINE)
_FIELD_LINE_RE = re.compile(_FIELD_LINE)
_OBS_FOLD_RE = re.compile(rb"[ \t]+")
_HEAD_END_RE = re.compile(rb"\n\r?\n")
_CHUNK_HEADER_RE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_DIGITS_RE = re.compile(rb"[0-9]+")
_TOKEN_RE = re.compile(_TOKEN)
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)

# Body framing of the response being read.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _COMPLETE = range(4)
# Where a chunked body is: a chunk-size line, chunk data, the CRLF after it, the trailer.
_SIZE, _DATA, _FOOTER, _TRAILER = range(4)


class MalformedResponse(Exception):
    """The bytes from the backend are not an HTTP/1.1 response we can relay."""


class ResponseHead:
    """A final (non-1xx) response head; names lower-cased, framing headers normalised as h11
    does (one content-length, `transfer-encoding: chunked` lower-cased)."""

    __slots__ = ("headers", "http_version", "reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.http_version = http_version
        self.headers = headers


class _Framing:
    __slots__ = ("chunked", "content_length", "keep_alive")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True


def _normalise(fields: list[tuple[bytes, bytes]], framing: _Framing) -> list[tuple[bytes, bytes]]:
    """Lower-case the names and check the framing headers, as h11's normalize_and_validate."""
    out: list[tuple[bytes, bytes]] = []
    seen_length: bytes | None = None
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                raise MalformedResponse("conflicting Content-Length headers")
            value = lengths.pop()
            if not _DIGITS_RE.fullmatch(value) or len(value) > 20:
                raise MalformedResponse(f"bad Content-Length: {value!r}")
            if seen_length is None:
                seen_length = value
                framing.content_length = int(value)
                out.append((name, value))
            elif seen_length != value:
                raise MalformedResponse("conflicting Content-Length headers")
            continue
        if name == b"transfer-encoding":
            if framing.chunked:
                raise MalformedResponse("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise MalformedResponse(
                    f"only Transfer-Encoding: chunked is supported, not {value!r}"
                )
            framing.chunked = True
        elif name == b"connection" and b"close" in _comma_tokens(value):
            framing.keep_alive = False
        out.append((name, value))
    return out


def _comma_tokens(value: bytes) -> list[bytes]:
    return [token.strip() for token in value.lower().split(b",")]


def _field_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) lines without their line ends; obsolete line folding is joined."""
    folded: list[bytes] = []
    for line in lines:
        match = _OBS_FOLD_RE.match(line)
        if match:
            if not folded:
                raise MalformedResponse("continuation line at start of headers")
            folded[-1] += b" " + line[match.end() :]
        else:
            folded.append(line)
    fields = []
    for line in folded:
        field = _FIELD_LINE_RE.fullmatch(line)
        if field is None:
            raise MalformedResponse(f"illegal header line: {line!r}")
        fields.append((field[1], field[2]))
    return fields


def _split_lines(block: bytes) -> list[bytes]:
    """Lines of a block that ends with a line end, each without its LF or CRLF."""
    lines = block.split(b"\n")
    lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse_head(
    block: bytes, framing: _Framing
) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Status code, reason, version, headers of a head (`block` ends with its last line's end)."""
    whole = _HEAD_RE.fullmatch(block)
    if whole is not None:
        version, status, reason = whole[1], whole[2], whole[3]
        fields = _FIELDS_RE.findall(whole[4])
    else:
        # Folded header lines, or a malformed head: the line-by-line path says which.
        lines = _split_lines(block)
        status_line = _STATUS_LINE_RE.fullmatch(lines[0])
        if status_line is None:
            raise MalformedResponse(f"illegal status line: {lines[0]!r}")
        version, status, reason = status_line[1], status_line[2], status_line[3]
        fields = _field_lines(lines[1:])
    headers = _normalise(fields, framing)
    if version < b"1.1":
        framing.keep_alive = False
    return int(status), reason or b"", version, headers


class _ResponseReader:
    """Sans-IO reader of one response at a time: `feed` it bytes (b"" for end of stream),
    take the head with `head()`, then the body with `body()`.

    Raises `MalformedResponse` for anything h11 would refuse.
    """

    __slots__ = (
        "_buf",
        "_chunk_state",
        "_eof",
        "_footer_left",
        "_method",
        "_mode",
        "_pos",
        "_remaining",
        "_searched",
        "keep_alive",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        # How far the buffer has been searched for the end of a head, a chunk-size line or
        # a trailer section: a slow peer's pieces are not rescanned from the start each time.
        self._searched = 0
        self._eof = False
        self.start(b"GET")

    def start(self, method: bytes) -> None:
        """Expect the response to a request with this method."""
        self._method = method
        self._mode = _LENGTH
        self._remaining = 0
        self._chunk_state = _SIZE
        self._footer_left = 0
        self.keep_alive = True

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
            self._searched = 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._searched = max(0, self._searched - self._pos)
            self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def complete(self) -> bool:
        return self._mode == _COMPLETE

    def head(self) -> ResponseHead | None:
        """The final response head once it is all here (1xx heads are skipped); else None."""
        while True:
            buf, pos = self._buf, self._pos
            if pos < len(buf) and buf[pos] < 0x21:
                # Also what h11 does: a response never starts with whitespace or a control.
                raise MalformedResponse(f"illegal status line: {buf[pos : pos + 40]!r}")
            end = _HEAD_END_RE.search(buf, max(pos, self._searched - 2))
            if end is None:
                self._searched = len(buf)
                if len(buf) - pos > MAX_HEAD_BYTES:
                    raise MalformedResponse(f"response head larger than {MAX_HEAD_BYTES} bytes")
                if self._eof:
                    raise MalformedResponse("peer unexpectedly closed connection")
                return None
            self._pos = end.end()
            self._searched = self._pos
            framing = _Framing()
            status, reason, version, headers = _parse_head(buf[pos : end.start() + 1], framing)
            if 100 <= status < 200:
                continue
            if status < 200:
                raise MalformedResponse(f"status code {status} is not a final response")
            self._frame(status, framing)
            return ResponseHead(status, reason, version, headers)

    def _frame(self, status: int, framing: _Framing) -> None:
        # RFC 9112 section 6.3, in h11's order: no body, then chunked, then length, then close.
        self.keep_alive = framing.keep_alive
        if self._method == b"CONNECT" and 200 <= status < 300:
            raise MalformedResponse("the backend accepted a CONNECT: tunnels are not relayed")
        if status in (204, 304) or self._method == b"HEAD":
            self._mode = _COMPLETE
        elif framing.chunked:
            self._mode = _CHUNKED
        elif framing.content_length is not None:
            self._remaining = framing.content_length
            self._mode = _LENGTH if self._remaining else _COMPLETE
        else:
            self._mode = _UNTIL_CLOSE
            self.keep_alive = False

    def body(self, out: list[bytes]) -> bool:
        """Append the body bytes that are here to `out`; True once the body is complete."""
        mode = self._mode
        if mode == _LENGTH:
            buf, pos = self._buf, self._pos
            available = len(buf) - pos
            if available:
                take = min(available, self._remaining)
                out.append(buf if take == len(buf) else buf[pos : pos + take])
                self._pos = pos + take
                self._remaining -= take
                if not self._remaining:
                    self._mode = _COMPLETE
                    return True
            if self._eof:
                raise MalformedResponse(
                    "peer closed connection without sending complete message body "
                    f"({self._remaining} of its bytes missing)"
                )
            return False
        if mode == _COMPLETE:
            return True
        if mode == _UNTIL_CLOSE:
            if self._pos < len(self._buf):
                out.append(self._buf[self._pos :] if self._pos else self._buf)
                self._pos = len(self._buf)
            if self._eof:
                self._mode = _COMPLETE
                return True
            return False
        return self._chunked_body(out)

    def _chunked_body(self, out: list[bytes]) -> bool:
        while True:
            buf, pos, state = self._buf, self._pos, self._chunk_state
            if state == _DATA:
                available = len(buf) - pos
                if not available:
                    break
                take = min(available, self._remaining)
                out.append(buf if take == len(buf) else buf[pos : pos + take])
                self._pos = pos + take
                self._remaining -= take
                if not self._remaining:
                    self._chunk_state = _FOOTER
                    self._footer_left = 2
            elif state == _SIZE:
                end = buf.find(b"\r\n", max(pos, self._searched - 1))
                if end < 0:
                    self._searched = len(buf)
                    if len(buf) - pos > MAX_HEAD_BYTES:
                        raise MalformedResponse("chunk-size line too long")
                    break
                line = _CHUNK_HEADER_RE.fullmatch(buf, pos, end + 2)
                if line is None:
                    raise MalformedResponse(f"illegal chunk header: {buf[pos : end + 2]!r}")
                self._pos = end + 2
                self._searched = self._pos
                self._remaining = int(line[1], 16)
                self._chunk_state = _DATA if self._remaining else _TRAILER
            elif state == _FOOTER:
                want = b"\r\n"[2 - self._footer_left :]
                got = buf[pos : pos + len(want)]
                if not got:
                    break
                if got != want[: len(got)]:
                    raise MalformedResponse(f"malformed chunk footer: {got!r}")
                self._pos = pos + len(got)
                self._footer_left -= len(got)
                if self._footer_left:
                    break
                self._chunk_state = _SIZE
            else:
                if buf[pos : pos + 1] == b"\n":
                    self._pos = pos + 1
                elif buf[pos : pos + 2] == b"\r\n":
                    self._pos = pos + 2
                else:
                    end_match = _HEAD_END_RE.search(buf, max(pos, self._searched - 2))
                    if end_match is None:
                        self._searched = len(buf)
                        if len(buf) - pos > MAX_HEAD_BYTES:
                            raise MalformedResponse("trailer section too long")
                        break
                    self._pos = end_match.end()
                    self._searched = self._pos
                    # Trailers are dropped, but checked: h11 would refuse bad ones.
                    trailers = _field_lines(_split_lines(buf[pos : end_match.start() + 1]))
                    _normalise(trailers, _Framing())
                self._mode = _COMPLETE
                return True
        if self._eof:
            raise MalformedResponse(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        return False
