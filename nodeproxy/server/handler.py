"""What a listener's connection loop hands each request to: a ``Handler``.

The connection loop (``server/connection.py``) reads request heads, turns
errors into answers and accounts for each request; what a request *means*
is a handler's business. The outbound listeners' handler is the
``Pipeline`` (``pipeline.py``: route, balance, forward); the mesh inbound
listener's is ``InboundHandler`` (``mesh/inbound.py``: destination, policy,
forward). A new kind of listener brings a new handler, and the server
package stays below all of them: it imports none.
"""

from __future__ import annotations

from typing import Protocol

from nodeproxy.http1.impl import h11
from nodeproxy.server.admission import Admission
from nodeproxy.server.downstream import Downstream, Exchange


class Handler(Protocol):
    """One listener's request handling, shared by all its connections."""

    # The listener's rate limits and per-source fairness: the loop admits each
    # request through it (when ``enabled``) before ``handle``.
    admission: Admission
    # Whether CONNECT requests reach ``handle`` (else the codec refuses them: 400).
    accepts_connect: bool

    def bound(self, port: int) -> None:
        """The listener's port, once bound (before any connection is accepted)."""

    async def handle(self, down: Downstream, request: h11.Request, ex: Exchange) -> bool:
        """Answer ``request`` (filling ``ex`` in); True when the connection may be kept
        alive. Raises ``ProxyError`` for the loop to answer."""
