"""Protocol detection: the first bytes a client sends -> HTTP/1.x, TLS or plain TCP.

Pure and incremental: ``classify(data, final=False)`` returns None while the
bytes so far could still be either, and a ``Detected`` once they cannot;
``final=True`` (the deadline passed, or the client half-closed) forces an
answer. What cannot be recognised is TCP: a wrong "TCP" only loses HTTP
routing (the bytes are carried unchanged), a wrong "HTTP" would break the
connection, so every doubt falls to TCP.

- HTTP/1.x: a request line that starts with a method token from RFC 9110
  (plus PATCH) and a space, and, once the line is complete, ends in
  ``HTTP/1.0`` or ``HTTP/1.1``. HTTP/2 with prior knowledge (``PRI *``) is TCP.
- TLS: a handshake record (``0x16 0x03 0x0N``) holding a ClientHello; its
  ``server_name`` is read for the logs and policy, from the first record
  only (bounded: a record is at most 16 KiB). A ClientHello split over
  records, or none at all, is still TLS, with no SNI.
- Anything else: TCP. No bytes before the deadline (a server-first protocol
  such as MySQL or SMTP waits for the server): TCP, with nothing peeked.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class Protocol(enum.Enum):
    HTTP1 = "http1"
    TLS = "tls"
    TCP = "tcp"


@dataclass(frozen=True)
class Detected:
    protocol: Protocol
    sni: str | None = None  # TLS only: the ClientHello's server_name, when it has one


METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
           b"PATCH")  # fmt: skip
_PREFIXES = tuple(m + b" " for m in METHODS)
MAX_REQUEST_LINE = 8192  # longer than this with no CRLF: decided on the method alone
MAX_PEEK = 5 + (1 << 14)  # a TLS record header and the largest record
TCP = Detected(Protocol.TCP)
HTTP1 = Detected(Protocol.HTTP1)


def classify(data: bytes, *, final: bool = False) -> Detected | None:
    """What ``data`` (everything read so far) is; None: read more (``final`` never is)."""
    if not data:
        return TCP if final else None
    if data[0] == 0x16:
        return _tls(data, final)
    return _http(data, final)


def _http(data: bytes, final: bool) -> Detected | None:
    for prefix in _PREFIXES:
        if data.startswith(prefix):
            break
        if prefix.startswith(data[: len(prefix)]) and len(data) < len(prefix):
            return TCP if final else None  # "GE": could still be "GET "
    else:
        return TCP
    end = data.find(b"\r\n")
    if end < 0:
        if final or len(data) >= MAX_REQUEST_LINE:
            return HTTP1  # a method and a space, and a long or slow target: h11 judges it
        return None
    version = data[:end].rsplit(b" ", 1)[-1]
    return HTTP1 if version in (b"HTTP/1.1", b"HTTP/1.0") else TCP


def _tls(data: bytes, final: bool) -> Detected | None:
    if len(data) < 3:
        return (None if not final else TCP) if data[1:2] in (b"", b"\x03") else TCP
    if data[1] != 0x03 or data[2] > 0x04:
        return TCP
    if len(data) < 5:
        return Detected(Protocol.TLS) if final else None
    length = struct.unpack_from("!H", data, 3)[0]
    if len(data) < 5 + length and not final:
        return None
    record = data[5 : 5 + length]
    if record[:1] != b"\x01":  # a handshake record that does not open with a ClientHello
        return TCP if len(record) else Detected(Protocol.TLS)
    return Detected(Protocol.TLS, server_name(record))


def server_name(hello: bytes) -> str | None:
    """The host_name of the server_name extension in a ClientHello handshake message
    (RFC 8446 4.1.2, RFC 6066 3); None when absent, cut short or malformed."""
    try:
        p = 4 + 2 + 32  # handshake header, legacy_version, random
        p += 1 + hello[p]  # legacy_session_id
        p += 2 + struct.unpack_from("!H", hello, p)[0]  # cipher_suites
        p += 1 + hello[p]  # legacy_compression_methods
        end = p + 2 + struct.unpack_from("!H", hello, p)[0]
        p += 2
        while p + 4 <= end:
            kind, size = struct.unpack_from("!HH", hello, p)
            p += 4
            if kind == 0:  # server_name: a list of (type, length-prefixed name)
                q, stop = p + 2, p + 2 + struct.unpack_from("!H", hello, p)[0]
                while q + 3 <= stop:
                    name_type, name_len = hello[q], struct.unpack_from("!H", hello, q + 1)[0]
                    name = hello[q + 3 : q + 3 + name_len]
                    if name_type == 0 and len(name) == name_len:
                        text = name.decode("ascii")
                        return text if text.isprintable() and text else None
                    q += 3 + name_len
                return None
            p += size
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None
