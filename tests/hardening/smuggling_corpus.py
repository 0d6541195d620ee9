"""Request-smuggling corpus: the published mutation families, re-implemented as our own.

Families (after defparam/smuggler's `configs/*.py` and the HTTP Garden's trophies):

- `te-name` / `te-value`: every byte value 0x00-0xff placed before or after the
  Transfer-Encoding name, and before or after its value, plus named obfuscations (quoted,
  lists, case, doubled headers, `xchunked`...).
- `cl`: duplicate and malformed Content-Length (lists, signs, hex, overflow, every byte
  value before and after the value).
- `chunk`: chunk-size tricks (prefixes, overflow, extensions, bare LF, data longer than its
  size, trailers).
- `line`: line-ending tricks (bare CR/LF, obs-fold) on the request line and framing headers.
- `name`: header-name tricks (underscores, whitespace before the colon, look-alikes,
  framing headers listed in `Connection`, Host variants).

Each framing mutation is tried in two shapes, as smuggler does: `cl.te` (Content-Length
first, body `0\\r\\n\\r\\n<smuggled request>`) and `te.cl` (Transfer-Encoding first, a chunk
holding the smuggled request, Content-Length 4). Whichever framing a parser picks, the body
is complete, so no case waits on a timeout. Every request carries `Connection: close`, so the
proxy handles one message per connection and leftovers are never parsed.

The marker `@ID@` in a case's bytes is replaced by the case number when it is sent: the
outer request targets `/smug/<id>`, the smuggled one `/smuggled/<id>` (`<id>` four digits).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MARK = b"@ID@"
SMUGGLED = b"GET /smuggled/" + MARK + b" HTTP/1.1\r\nHost: app\r\nX: "
TE = b"Transfer-Encoding"
CL = b"Content-Length"


@dataclass(frozen=True)
class Case:
    family: str
    label: str
    payload: bytes
    #: The checklist requires a refusal (RELIABILITY rows 1, 2, 3, 5): forwarding fails.
    must_refuse: bool = False

    def render(self, case_id: int) -> bytes:
        """The bytes to send; the id keeps the marker's width, so lengths stay right."""
        return self.payload.replace(MARK, marker(case_id))


def marker(case_id: int) -> bytes:
    assert 0 <= case_id < 10_000
    return b"%04d" % case_id


def request(headers: list[bytes], body: bytes, *, line: bytes = b"", eol: bytes = b"\r\n") -> bytes:
    """A POST to `/smug/<id>` with `headers` (full lines without their ending) and `body`."""
    start = line or b"POST /smug/" + MARK + b" HTTP/1.1"
    lines = [start, b"Host: app", b"Connection: close", *headers]
    return b"".join(part + eol for part in lines) + eol + body


def cl_te(te_line: bytes, *, te_first: bool = False) -> bytes:
    """Content-Length and a (mutated) Transfer-Encoding line, CL.TE or TE.CL shaped."""
    if te_first:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
        return request([te_line, CL + b": 4"], body)
    body = b"0\r\n\r\n" + SMUGGLED
    return request([CL + b": %d" % len(body), te_line], body)


def both_shapes(family: str, label: str, te_line: bytes, must_refuse: bool) -> Iterator[Case]:
    yield Case(family, f"cl.te {label}", cl_te(te_line), must_refuse)
    yield Case(family, f"te.cl {label}", cl_te(te_line, te_first=True), must_refuse)


def te_byte_sweep() -> Iterator[Case]:
    """Every byte before/after the name and the value (smuggler's exhaustive config)."""
    for byte in range(256):
        b = bytes([byte])
        shapes = {
            "name-prefix": b + TE + b": chunked",
            "name-suffix": TE + b + b": chunked",
            "value-prefix": TE + b":" + b + b"chunked",
            "value-suffix": TE + b": chunked" + b,
        }
        for where, line in shapes.items():
            family = "te-name" if where.startswith("name") else "te-value"
            # Content-Length is present in both shapes: a recognised Transfer-Encoding with
            # it is CL+TE (row 1); an unrecognised one must at least not be forwarded raw.
            yield from both_shapes(family, f"{where} 0x{byte:02x}", line, must_refuse=False)


TE_NAMED: list[tuple[str, bytes]] = [
    ("plain", TE + b": chunked"),
    ("space-before-colon", TE + b" : chunked"),
    ("tab-before-colon", TE + b"\t: chunked"),
    ("underscore", b"Transfer_Encoding: chunked"),
    ("space-in-name", b"Transfer Encoding: chunked"),
    ("upper", b"TRANSFER-ENCODING: CHUNKED"),
    ("mixed-case", b"TrAnSfEr-EnCoDiNg: cHuNkEd"),
    ("quoted", TE + b': "chunked"'),
    ("single-quoted", TE + b": 'chunked'"),
    ("identity-chunked", TE + b": identity, chunked"),
    ("chunked-identity", TE + b": chunked, identity"),
    ("leading-comma", TE + b": ,chunked"),
    ("trailing-comma", TE + b": chunked,"),
    ("chunked-twice-list", TE + b": chunked, chunked"),
    ("chunked-twice-lines", TE + b": chunked\r\n" + TE + b": chunked"),
    ("x-then-chunked", TE + b": x\r\n" + TE + b": chunked"),
    ("chunked-then-x", TE + b": chunked\r\n" + TE + b": x"),
    ("xchunked", TE + b": xchunked"),
    ("chunkedx", TE + b": chunkedx"),
    ("chunk", TE + b": chunk"),
    ("gzip-chunked", TE + b": gzip, chunked"),
    ("nul-value", TE + b": \x00chunked"),
    ("semicolon", TE + b": chunked;q=1"),
    ("obs-fold", TE + b":\r\n chunked"),
    ("obs-fold-tab", TE + b":\r\n\tchunked"),
    ("split-value-fold", TE + b": chun\r\n ked"),
    ("leading-space-line", b" " + TE + b": chunked"),
    ("leading-tab-line", b"\t" + TE + b": chunked"),
    ("bare-lf-before", b"X: y\n" + TE + b": chunked"),
    ("bare-cr-before", b"X: y\r" + TE + b": chunked"),
    ("bare-lf-after", TE + b": chunked\nX: y"),
    ("dotless-i", "Transfer-Encod\u0131ng: chunked".encode()),
    ("long-s", "Tran\u017ffer-Encoding: chunked".encode()),
    ("nbsp-value", TE + b":\xa0chunked"),
    ("utf8-nbsp-value", TE + b":\xc2\xa0chunked"),
    ("vertical-tab", TE + b":\x0bchunked"),
    ("form-feed", TE + b":\x0cchunked"),
    ("no-colon", TE + b" chunked"),
    ("double-colon", TE + b":: chunked"),
    ("empty-value", TE + b":"),
    ("content-encoding", b"Content-Encoding: chunked"),
    ("connection-listed", b"Connection: transfer-encoding\r\n" + TE + b": chunked"),
    ("te-header", b"TE: chunked"),
]


#: Not a Transfer-Encoding at all: Content-Length frames these and forwarding is fine.
TE_LOOKALIKES = {"content-encoding", "te-header"}


def te_named() -> Iterator[Case]:
    for label, line in TE_NAMED:
        yield from both_shapes("te-named", label, line, label not in TE_LOOKALIKES)


CL_VALUES: list[tuple[str, bytes, bool]] = [
    # (label, header lines, must be refused)
    ("list", CL + b": 3,2", True),
    ("list-same", CL + b": 5, 5", True),
    ("two-differing", CL + b": 5\r\n" + CL + b": 6", True),
    ("two-same", CL + b": 5\r\n" + CL + b": 5", True),
    ("plus", CL + b": +5", True),
    ("minus", CL + b": -1", True),
    ("hex", CL + b": 0x5", True),
    ("empty", CL + b":", True),
    ("space-only", CL + b":  ", True),
    ("decimal", CL + b": 5.0", True),
    ("exponent", CL + b": 5e0", True),
    ("overflow-64", CL + b": 18446744073709551621", True),
    ("overflow-huge", CL + b": " + b"9" * 40, True),
    ("fullwidth-digit", CL + ": \uff15".encode(), True),
    ("inner-space", CL + b": 5 5", True),
    ("nul-suffix", CL + b": 5\x00", True),
    ("underscore", b"Content_Length: 5", True),
    ("space-before-colon", CL + b" : 5", True),
    ("obs-fold", CL + b":\r\n 5", True),
    ("leading-zeros", CL + b": 0005", False),
    ("upper", b"CONTENT-LENGTH: 5", False),
    ("zero", CL + b": 0", False),
    ("connection-listed", b"Connection: content-length\r\n" + CL + b": 5", False),
]


def cl_cases() -> Iterator[Case]:
    # Long enough for any two-digit length a mutated value may still parse as.
    body = (b"hello" + SMUGGLED).ljust(100, b"p")
    for label, line, refuse in CL_VALUES:
        yield Case("cl", label, request([line], body), refuse)
    for byte in range(256):
        b = bytes([byte])
        for where, line in {"prefix": CL + b":" + b + b"5", "suffix": CL + b": 5" + b}.items():
            yield Case("cl", f"value-{where} 0x{byte:02x}", request([line], body))


CHUNKED_BODIES: list[tuple[str, bytes, bool]] = [
    # (label, body after a plain `Transfer-Encoding: chunked` head, must be refused)
    ("valid", b"5\r\nhello\r\n0\r\n\r\n", False),
    ("hex-prefix", b"0x5\r\nhello\r\n0\r\n\r\n", True),
    ("plus", b"+5\r\nhello\r\n0\r\n\r\n", True),
    ("minus", b"-5\r\nhello\r\n0\r\n\r\n", True),
    ("leading-space", b" 5\r\nhello\r\n0\r\n\r\n", True),
    ("17-hex-digits", b"10000000000000005\r\nhello\r\n0\r\n\r\n", True),
    ("overflow-ff", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n", True),
    ("underscore", b"0_5\r\nhello\r\n0\r\n\r\n", True),
    ("bare-lf-size", b"5\nhello\r\n0\r\n\r\n", True),
    ("bare-lf-data", b"5\r\nhello\n0\r\n\r\n", True),
    ("bare-lf-last", b"5\r\nhello\r\n0\n\n", True),
    ("cr-only", b"5\rhello\r0\r\r", True),
    ("data-longer", b"3\r\nhello\r\n0\r\n\r\n", True),
    ("data-shorter", b"8\r\nhello\r\n0\r\n\r\n" + b"x" * 8, True),
    ("no-crlf-after-data", b"5\r\nhelloX\r\n0\r\n\r\n", True),
    ("cr-in-extension", b"5;a=\rb\r\nhello\r\n0\r\n\r\n", True),
    ("lf-in-extension", b"5;a=\nb\r\nhello\r\n0\r\n\r\n", True),
    ("nul-in-extension", b"5;a=\x00\r\nhello\r\n0\r\n\r\n", True),
    ("bad-trailer", b"5\r\nhello\r\n0\r\nX y\r\n\r\n", True),
    ("trailer-fold", b"5\r\nhello\r\n0\r\nX: y\r\n z\r\n\r\n", True),
    ("uppercase-hex", b"A\r\n0123456789\r\n0\r\n\r\n", False),
    ("leading-zeros", b"0005\r\nhello\r\n0\r\n\r\n", False),
    ("extension", b"5;name=value\r\nhello\r\n0\r\n\r\n", False),
    ("extension-quoted", b'5;name="v a l"\r\nhello\r\n0\r\n\r\n', False),
    ("last-chunk-extension", b"5\r\nhello\r\n0;x=y\r\n\r\n", False),
    ("trailer", b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", False),
    ("many-small", b"".join(b"1\r\n%c\r\n" % c for c in b"abcdefgh") + b"0\r\n\r\n", False),
    ("empty", b"0\r\n\r\n", False),
]


def chunk_cases() -> Iterator[Case]:
    for label, body, refuse in CHUNKED_BODIES:
        yield Case("chunk", label, request([TE + b": chunked"], body + SMUGGLED), refuse)


LINE_ENDINGS: list[tuple[str, bytes]] = [
    ("lf", b"\n"),
    ("cr", b"\r"),
    ("cr-cr-lf", b"\r\r\n"),
    ("lf-cr", b"\n\r"),
    ("nul-crlf", b"\x00\r\n"),
    ("space-crlf", b" \r\n"),
]


def line_cases() -> Iterator[Case]:
    chunked_body = b"0\r\n\r\n" + SMUGGLED
    for label, eol in LINE_ENDINGS:
        # The whole message with this line ending.
        yield Case(
            "line", f"all-lines {label}", request([TE + b": chunked"], chunked_body, eol=eol), True
        )
        yield from both_shapes("line", f"te-line {label}", TE + b": chunked" + eol + b"X: y", True)
        # After the request line.
        line = b"POST /smug/" + MARK + b" HTTP/1.1" + eol + b"X: y"
        yield Case(
            "line",
            f"request-line {label}",
            request([TE + b": chunked"], chunked_body, line=line),
            True,
        )
    # Header block ended by bare LFs, and obs-fold continuing other headers.
    yield Case(
        "line",
        "lf-lf-end",
        request([TE + b": chunked"], chunked_body).replace(b"\r\n\r\n", b"\n\n", 1),
        True,
    )
    yield Case(
        "line",
        "crlf-lf-end",
        request([TE + b": chunked"], chunked_body).replace(b"\r\n\r\n", b"\r\n\n", 1),
        True,
    )
    yield Case(
        "line",
        "fold-host",
        request([b"X: y\r\n Host: evil", TE + b": chunked"], chunked_body),
        True,
    )
    yield Case(
        "line",
        "fold-into-te",
        request([b"X: y\r\n " + TE + b": chunked", CL + b": 5"], b"hello" + SMUGGLED),
        True,
    )
    yield Case(
        "line",
        "space-first-header",
        request([], b"").replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\n X: y\r\n", 1),
        True,
    )
    yield Case(
        "line", "http-1.01", request([], b"", line=b"POST /smug/" + MARK + b" HTTP/1.01"), True
    )
    yield Case("line", "http-09", b"GET /smug/" + MARK + b"\r\n\r\n", True)
    # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
    http10 = b"POST /smug/" + MARK + b" HTTP/1.0"
    yield Case("line", "http-1.0-te", request([TE + b": chunked"], chunked_body, line=http10), True)
    yield Case(
        "line",
        "http-1.0-te-cl",
        request([TE + b": chunked", CL + b": 5"], b"hello", line=http10),
        True,
    )
    yield Case(
        "line", "method-paren", request([], b"", line=b"GE(T /smug/" + MARK + b" HTTP/1.1"), True
    )
    # RFC 9112 §3 lets a recipient split the request line on whitespace runs.
    yield Case("line", "two-spaces", request([], b"", line=b"POST  /smug/" + MARK + b" HTTP/1.1"))
    yield Case(
        "line", "tab-separator", request([], b"", line=b"POST\t/smug/" + MARK + b" HTTP/1.1"), True
    )


NAME_TRICKS: list[tuple[str, list[bytes], bool]] = [
    ("paren-name", [b"X(A): y"], True),
    ("colon-in-name-less", [b"X y"], True),
    ("nul-in-name", [b"X\x00Y: y"], True),
    ("underscore-name", [b"X_Forwarded_For: 1.2.3.4"], True),
    ("second-host", [b"Host: evil"], True),
    ("host-userinfo", [b"Host: a@b"], True),
    ("host-space-colon", [b"Host : evil"], True),
    ("cr-in-value", [b"X: a\rb"], True),
    ("nul-in-value", [b"X: a\x00b"], True),
    ("del-in-value", [b"X: a\x7fb"], True),
    ("high-bytes-value", [b"X: caf\xc3\xa9"], False),
    ("connection-host", [b"Connection: host"], False),
    (
        "connection-cl-te",
        [b"Connection: content-length, transfer-encoding", TE + b": chunked"],
        False,
    ),
    ("keep-alive-hop", [b"Keep-Alive: timeout=5", b"Proxy-Connection: keep-alive"], False),
    ("upgrade-h2c", [b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__"], False),
    ("expect-continue", [b"Expect: 100-continue", CL + b": 5"], False),
    ("very-long-name", [b"X" * 8000 + b": y"], False),
]


def name_cases() -> Iterator[Case]:
    for label, headers, refuse in NAME_TRICKS:
        framed = (
            headers if any(h.startswith((TE, CL)) for h in headers) else [*headers, CL + b": 5"]
        )
        body = b"0\r\n\r\n" + SMUGGLED if any(h.startswith(TE) for h in headers) else b"hello"
        yield Case("name", label, request(framed, body), refuse)


def corpus() -> list[Case]:
    cases = [
        *te_byte_sweep(),
        *te_named(),
        *cl_cases(),
        *chunk_cases(),
        *line_cases(),
        *name_cases(),
    ]
    return cases
