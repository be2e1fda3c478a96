"""The HTTP/1.1 protocol the server speaks: uvicorn's, with connections let go when they end.

uvicorn (0.54, and its main branch) arms a keep-alive timer after each response, and
cancels it when the connection ends only if it ended cleanly. A connection that ends with
a reset (a client closing with data still unread, as one that leaves an event stream
before its end does; a proxy purging idle connections) leaves the timer holding the
protocol, its transport and its last request for the whole keep-alive timeout: 65 s here,
so memory grew with the rate of such closes.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HTTPProtocol(HttpToolsProtocol):
    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        timer = self.timeout_keep_alive_task
        if timer is not None:
            timer.cancel()
            self.timeout_keep_alive_task = None
