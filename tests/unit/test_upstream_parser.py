"""The upstream response reader against h11, the parser it replaced.

The same bytes, cut at arbitrary points, go to both; they must agree on every result: the
head (status, reason, version, headers as h11 normalises them), the body, whether the
connection could be reused, or that the response is refused. Well-formed responses cover
every framing (content-length, chunked with extensions and trailers, close-delimited, HEAD,
204/304, 1xx first, HTTP/1.0, `connection: close`); mutated ones check that what h11 refuses,
the reader refuses too.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmux.upstream.reader import MAX_HEAD_BYTES, MalformedResponse, _ResponseReader

Outcome = tuple[int, bytes, bytes, list[tuple[bytes, bytes]], bytes, bool] | str


def parse_ours(method: bytes, pieces: list[bytes]) -> Outcome:
    reader = _ResponseReader()
    reader.start(method)
    head = None
    body: list[bytes] = []
    rest = list(pieces)
    try:
        while True:
            reader.feed(rest.pop(0) if rest else b"")
            if head is None:
                head = reader.head()
            if head is not None and reader.body(body):
                break
            if reader._eof:
                return "refused"  # the body was still incomplete at the end of the stream
    except MalformedResponse:
        return "refused"
    reusable = reader.keep_alive and not reader.buffered and not any(rest)
    return (
        head.status_code,
        head.reason,
        head.http_version,
        head.headers,
        b"".join(body),
        reusable,
    )


def parse_h11(method: bytes, pieces: list[bytes]) -> Outcome:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    response = None
    body = b""
    rest = list(pieces)
    ended = False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.their_state is h11.CLOSED:
                    return "refused"
                ended = not rest
                conn.receive_data(rest.pop(0) if rest else b"")
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return "refused"
    except h11.RemoteProtocolError:
        return "refused"
    assert response is not None
    # (The old pool pooled a connection whose body ended with the stream, and threw it away
    # on its next checkout; the reader says at once that it cannot be reused.)
    reusable = (
        not ended
        and conn.our_state is h11.DONE
        and conn.their_state is h11.DONE
        and not conn.trailing_data[0]
        and not any(rest)
    )
    return (
        response.status_code,
        bytes(response.reason),
        bytes(response.http_version),
        [(bytes(name), bytes(value)) for name, value in response.headers],
        body,
        reusable,
    )


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({min(point, len(data)) for point in points})
    pieces, start = [], 0
    for bound in [*bounds, len(data)]:
        pieces.append(data[start:bound])
        start = bound
    return [piece for piece in pieces if piece]


# ---- well-formed responses ---------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
words = st.binary(min_size=1, max_size=8).map(
    lambda raw: bytes(b if 0x21 <= b <= 0x7E or b >= 0x80 else 0x61 for b in raw)
)
values = st.lists(words, max_size=3).flatmap(
    lambda ws: st.lists(
        st.sampled_from([b" ", b"\t", b"  "]), min_size=len(ws), max_size=len(ws)
    ).map(lambda seps: b"".join(sep + w for sep, w in zip(seps, ws, strict=True)).lstrip(b" \t"))
)
ows = st.sampled_from([b"", b" ", b"\t", b"  "])
eol = st.sampled_from([b"\r\n", b"\r\n", b"\n"])
ordinary_names = tokens.filter(
    lambda n: n.lower() not in (b"content-length", b"transfer-encoding", b"connection")
)


def random_case(draw: st.DrawFn, text: bytes) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return bytes(
        (c ^ 0x20) if flip and chr(c).isalpha() else c for c, flip in zip(text, flips, strict=True)
    )


def field(draw: st.DrawFn, name: bytes, value: bytes) -> bytes:
    return random_case(draw, name) + b":" + draw(ows) + value + draw(ows) + draw(eol)


@dataclass
class Response:
    method: bytes
    data: bytes


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        out += b"HTTP/1.1 %d Continue" % draw(st.sampled_from([100, 102, 103])) + draw(eol)
        out += b"".join(
            field(draw, n, v) for n, v in draw(st.lists(st.tuples(tokens, values), max_size=2))
        )
        out += draw(eol)
    status = draw(st.sampled_from([200, 201, 204, 206, 304, 404, 500]) | st.integers(200, 999))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    reason = draw(st.sampled_from([b" OK", b" Not Found", b" ", b"", b" a\tb  c", b" \x80\xff"]))
    out += b"HTTP/" + version + b" %03d" % status + reason + draw(eol)
    fields = [
        field(draw, n, v) for n, v in draw(st.lists(st.tuples(ordinary_names, values), max_size=4))
    ]
    if draw(st.booleans()):
        connection = draw(
            st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, Close", b"upgrade"])
        )
        fields.append(field(draw, b"connection", connection))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    trailer = b""
    if framing == "length":
        length = b"%d" % len(body)
        fields.append(
            field(draw, b"content-length", draw(st.sampled_from([length, length + b", " + length])))
        )
        if draw(st.booleans()):
            fields.append(field(draw, b"content-length", length))
        payload = body
    elif framing == "chunked":
        fields.append(field(draw, b"transfer-encoding", random_case(draw, b"chunked")))
        payload = b""
        rest = body
        while rest:
            size = draw(st.integers(1, len(rest)))
            chunk, rest = rest[:size], rest[size:]
            hexsize = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % size
            ext = draw(st.sampled_from([b"", b";a=b", b"; name"]))
            payload += (
                hexsize + ext + draw(st.sampled_from([b"", b" "])) + b"\r\n" + chunk + b"\r\n"
            )
        payload += b"0" + draw(st.sampled_from([b"", b";x"])) + b"\r\n"
        trailers = draw(st.lists(st.tuples(ordinary_names, values), max_size=2))
        trailer = b"".join(field(draw, n, v) for n, v in trailers) + draw(eol)
        payload += trailer
    else:
        payload = body
    out += b"".join(draw(st.permutations(fields))) + draw(eol)
    no_body = method == b"HEAD" or status in (204, 304)
    if not (no_body and framing == "close"):
        out += payload
    if framing != "close" and draw(st.booleans()):
        out += draw(st.sampled_from([b"x", b"HTTP/1.1 200 OK\r\n\r\n", b"\r\n"]))
    return Response(method, out)


cut_points = st.lists(st.integers(0, 400), max_size=8)


@settings(max_examples=600, deadline=None)
@given(responses(), cut_points)
def test_well_formed_responses_parse_as_h11_parses_them(
    response: Response, points: list[int]
) -> None:
    pieces = cut(response.data, points)
    expected = parse_h11(response.method, pieces)
    assert expected != "refused", response.data  # the strategy makes only valid responses
    assert parse_ours(response.method, pieces) == expected


@settings(max_examples=200, deadline=None)
@given(responses())
def test_every_byte_boundary_gives_the_same_result(response: Response) -> None:
    whole = parse_ours(response.method, [response.data])
    bytewise = [response.data[i : i + 1] for i in range(len(response.data))]
    assert parse_ours(response.method, bytewise) == whole


# ---- malformed responses -----------------------------------------------------------------

INTERESTING = b"\r\n :;,0aZ\x00\t\x7f\x80-"


@st.composite
def mutated(draw: st.DrawFn) -> Response:
    response = draw(responses())
    data = bytearray(response.data)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "insert" or at == len(data):
            data.insert(at, byte)
        elif kind == "replace":
            data[at] = byte
        else:
            del data[at]
    return Response(response.method, bytes(data))


@settings(max_examples=1500, deadline=None)
@given(mutated(), cut_points)
@example(Response(b"GET", b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx"), [])
@example(Response(b"GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), [])
@example(Response(b"GET", b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n"), [])
@example(Response(b"GET", b"HTTP/1.1 200 OK\r\nx: a\r\n  b\r\ncontent-length: 0\r\n\r\n"), [5])
@example(Response(b"GET", b"HTTP/1.1 099 Odd\r\n\r\n"), [])
@example(Response(b"GET", b"\r\nHTTP/1.1 200 OK\r\n\r\n"), [])
@example(Response(b"GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab"), [])
@example(Response(b"GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\n"), [])
@example(
    Response(b"GET", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nbad\r\n\r\n"), []
)
def test_mutated_responses_are_refused_exactly_when_h11_refuses_them(
    response: Response, points: list[int]
) -> None:
    pieces = cut(response.data, points)
    assert parse_ours(response.method, pieces) == parse_h11(response.method, pieces)


# ---- limits h11 had and the reader keeps ----------------------------------------------------


def test_an_endless_head_is_refused() -> None:
    reader = _ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * (MAX_HEAD_BYTES // 6))
    with pytest.raises(MalformedResponse, match="larger than"):
        reader.head()


def test_an_endless_chunk_size_line_is_refused() -> None:
    reader = _ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert reader.head() is not None
    reader.feed(b"5;" + b"x" * MAX_HEAD_BYTES)
    with pytest.raises(MalformedResponse, match="too long"):
        reader.body([])


def test_connect_tunnels_are_refused() -> None:
    reader = _ResponseReader()
    reader.start(b"CONNECT")
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(MalformedResponse, match="CONNECT"):
        reader.head()
