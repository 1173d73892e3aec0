"""The handoff protocol, sans I/O: frames, messages and the order they may come in.

Why a protocol of its own: a new ``nodeproxy run`` takes over the listening
sockets of the running one (Envoy's hot restart), so that a restart or an
upgrade never closes an accept backlog. The two processes talk over a Unix
stream socket; the sockets themselves travel as file descriptors
(``SCM_RIGHTS``) attached to one message. This module knows nothing of
sockets or trio: it turns messages into bytes, turns bytes plus received
descriptors back into messages, and checks that each side only says what it
may say next (``Session``, a transition table in the style of h11's
``_state.py``). Anything else is a ``HandoffProtocolError``; descriptors that
arrived with bad input are closed, never leaked.

The conversation (one connection, the new process calls):

    new -> old   hello    {"version": 1, "pid": N}
    old -> new   sockets  {"names": [...]}  + one descriptor per name, same order
             or  refused  {"code": "busy" | "draining" | "version", "reason": "..."}
    new -> old   serving  {"pid": N}          (the old one stops accepting and drains)
    old -> new   done     {}                  (drained; it exits 0 next)

A frame is a 4-byte big-endian length and a UTF-8 JSON object, at most
``MAX_FRAME`` bytes.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_FRAME = 64 * 1024
MAX_FDS = 64  # descriptors in one "sockets" message (listeners x address families)
_HEADER = struct.Struct(">I")

REFUSED_CODES = ("busy", "draining", "version")


class HandoffError(Exception):
    """A handoff did not happen; the message says why."""


class HandoffProtocolError(HandoffError):
    """The peer sent something this protocol does not allow."""


class HandoffRefused(HandoffError):
    """The running process answered and said no (``code`` says why)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One message: its ``type``, its JSON fields, and the descriptors it carried."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    fds: tuple[int, ...] = ()


def hello(pid: int, version: int = VERSION) -> Message:
    return Message("hello", {"version": version, "pid": pid})


def sockets(names: list[str], fds: list[int]) -> Message:
    if len(names) != len(fds):
        raise ValueError("one descriptor per name")
    return Message("sockets", {"names": names}, tuple(fds))


def refused(code: str, reason: str) -> Message:
    return Message("refused", {"code": code, "reason": reason})


def version_refusal(hello: Message) -> Message | None:
    """The answer to a hello in a version this process does not speak; None if it does."""
    version = hello.fields["version"]
    if version == VERSION:
        return None
    return refused("version", f"handoff protocol version {version}; this process speaks {VERSION}")


def serving(pid: int) -> Message:
    return Message("serving", {"pid": pid})


def done() -> Message:
    return Message("done")


def encode(message: Message) -> bytes:
    """The frame for ``message`` (its descriptors go alongside, in the same send)."""
    body = json.dumps({"type": message.type, **message.fields}).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"handoff message over {MAX_FRAME} bytes")
    return _HEADER.pack(len(body)) + body


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# type -> (required field, check) pairs, and how many descriptors it carries.
_FIELDS: dict[str, tuple[tuple[str, Any], ...]] = {
    "hello": (("version", _int), ("pid", _int)),
    "sockets": (("names", _str_list),),
    "refused": (("code", lambda v: v in REFUSED_CODES), ("reason", lambda v: isinstance(v, str))),
    "serving": (("pid", _int),),
    "done": (),
}


class Decoder:
    """Bytes and descriptors in, whole messages out; owns the descriptors until handed out."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fds: list[int] = []

    def __repr__(self) -> str:
        return f"<Decoder [{len(self.buffer)} bytes, {len(self.fds)} fds pending]>"

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        self.buffer += data
        self.fds.extend(fds)
        if len(self.fds) > MAX_FDS:
            self.close()
            raise HandoffProtocolError(f"more than {MAX_FDS} descriptors")

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        if len(self.buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self.buffer)
        if size > MAX_FRAME:
            self.close()
            raise HandoffProtocolError(f"frame of {size} bytes (at most {MAX_FRAME})")
        if len(self.buffer) < _HEADER.size + size:
            return None
        body = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
        del self.buffer[: _HEADER.size + size]
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self.close()
            raise HandoffProtocolError("not a handoff message (bad JSON)") from None
        if not isinstance(obj, dict) or obj.get("type") not in _FIELDS:
            self.close()
            raise HandoffProtocolError(f"not a handoff message: {body[:60]!r}")
        kind = obj.pop("type")
        for name, check in _FIELDS[kind]:
            if name not in obj or not check(obj[name]):
                self.close()
                raise HandoffProtocolError(f"{kind}: bad or missing {name!r}")
        wanted = len(obj["names"]) if kind == "sockets" else 0
        if wanted > len(self.fds):
            got = len(self.fds)
            self.close()
            raise HandoffProtocolError(f"{kind}: {wanted} sockets named, {got} received")
        if len(self.fds) > wanted:
            extra = len(self.fds) - wanted
            self.close()
            raise HandoffProtocolError(f"{kind}: {extra} descriptors nobody named")
        fds, self.fds = tuple(self.fds), []
        return Message(kind, obj, fds)

    def close(self) -> None:
        """Close every descriptor not handed out yet."""
        fds, self.fds = self.fds, []
        close_fds(fds)


def close_fds(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Role(enum.Enum):
    NEW = "new"  # the process taking the sockets
    OLD = "old"  # the running process handing them over


class State(enum.Enum):
    START = "start"
    WAIT_SOCKETS = "wait_sockets"
    WAIT_SERVING = "wait_serving"
    DRAINING = "draining"
    CLOSED = "closed"


# (state, message type) -> next state; the same table for both roles: each side
# checks what it sends and what it receives against it.
_TRANSITIONS: dict[tuple[State, str], State] = {
    (State.START, "hello"): State.WAIT_SOCKETS,
    (State.WAIT_SOCKETS, "sockets"): State.WAIT_SERVING,
    (State.WAIT_SOCKETS, "refused"): State.CLOSED,
    (State.WAIT_SERVING, "serving"): State.DRAINING,
    (State.DRAINING, "done"): State.CLOSED,
}
_SENDER = {"hello": Role.NEW, "sockets": Role.OLD, "refused": Role.OLD}
_SENDER |= {"serving": Role.NEW, "done": Role.OLD}


class Session:
    """Where one handoff conversation is; ``send``/``receive`` raise on an illegal step."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.START

    def __repr__(self) -> str:
        return f"<Session {self.role.value} {self.state.value}>"

    def send(self, message: Message) -> bytes:
        if _SENDER[message.type] is not self.role:
            raise HandoffProtocolError(f"the {self.role.value} process never sends {message.type}")
        self._step(message, "send")
        return encode(message)

    def receive(self, message: Message) -> Message:
        if _SENDER[message.type] is self.role:
            close_fds(message.fds)
            raise HandoffProtocolError(f"unexpected {message.type} from the peer")
        self._step(message, "receive")
        return message

    def _step(self, message: Message, verb: str) -> None:
        nxt = _TRANSITIONS.get((self.state, message.type))
        if nxt is None:
            close_fds(message.fds if verb == "receive" else ())
            raise HandoffProtocolError(f"cannot {verb} {message.type} in state {self.state.value}")
        self.state = nxt
