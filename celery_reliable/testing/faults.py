"""A TCP proxy that breaks the network between your code and a real service, on command.

Point a worker, a relay or a producer at the proxy instead of the service (``link.url``)
and the test decides what the network does: :meth:`FaultyLink.cut` it (an outage),
:meth:`FaultyLink.slow` it (latency), or :meth:`FaultyLink.drop_mid_stream` (a connection
reset halfway through a reply). The service itself stays up and is shared with other
tests; only the connections through this proxy suffer.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress
from types import TracebackType
from urllib.parse import urlsplit

#: Default ports of the services celery_reliable talks to, by URL scheme (drivers stripped).
DEFAULT_PORTS = {
    "postgresql": 5432,
    "postgres": 5432,
    "mysql": 3306,
    "mariadb": 3306,
    "redis": 6379,
    "rediss": 6380,
    "amqp": 5672,
    "amqps": 5671,
    "pyamqp": 5672,
}


class FaultyLink:
    """A TCP proxy on 127.0.0.1 to ``target_host:target_port`` with injectable faults.

    - :meth:`cut`: every open connection is closed, and new ones are closed as soon as
      accepted, as an outage looks to a client; :meth:`restore` ends it.
    - :meth:`slow`: each chunk of data, in both directions, is held back for ``delay``
      seconds (a slow network or an overloaded service).
    - :meth:`drop_mid_stream`: the next ``after_bytes`` bytes from the service pass, then
      the connection carrying them is cut there, in the middle of a reply (the ambiguous
      case: did the commit or the publish happen?). New connections work again at once.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, target_host: str, target_port: int, *, url: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.drops = 0
        self._target_url = url
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._drop_budget: int | None = None
        self._closed = False
        threading.Thread(target=self._accept, name=f"faulty-link-{self.port}", daemon=True).start()

    @classmethod
    def to(cls, url: str) -> FaultyLink:
        """A link to the service at ``url`` (``postgresql+psycopg://...``, ``redis://...``)."""
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0]
        port = parts.port or DEFAULT_PORTS.get(scheme)
        if port is None:
            raise ValueError(f"no port in {url!r} and no default port for {scheme!r}")
        return cls(parts.hostname or "127.0.0.1", port, url=url)

    @property
    def url(self) -> str:
        """The URL given to :meth:`to`, pointing at the proxy instead."""
        if self._target_url is None:
            raise ValueError("this link was made from a host and port: use url_for(url)")
        return self.url_for(self._target_url)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (credentials kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return parts._replace(netloc=f"{netloc}127.0.0.1:{self.port}").geturl()

    @property
    def open_connections(self) -> int:
        """Client connections currently carried."""
        with self._lock:
            return len(self._open) // 2

    def cut(self) -> None:
        """Start an outage: close every connection and refuse new ones until restore()."""
        self._cut.set()
        self._close_all()

    def restore(self) -> None:
        """End an outage: new connections go through again."""
        self._cut.clear()

    def slow(self, delay: float) -> None:
        """Hold back every chunk of data by ``delay`` seconds (0 ends it)."""
        self.delay = delay

    def drop_mid_stream(self, after_bytes: int = 1) -> None:
        """Let ``after_bytes`` more bytes come from the service, then cut the link there.

        Every connection open at that moment is closed (the one mid-reply included); new
        connections are accepted again straight away. Once per call; :attr:`drops` counts.
        """
        if after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0, got {after_bytes}")
        with self._lock:
            self._drop_budget = after_bytes

    @property
    def drop_armed(self) -> bool:
        """Whether a :meth:`drop_mid_stream` is waiting for its bytes (arming again replaces it)."""
        with self._lock:
            return self._drop_budget is not None

    def close(self) -> None:
        """Stop the proxy: every connection is closed and the port is released."""
        self._closed = True
        self.cut()
        _close(self._listener)

    def __enter__(self) -> FaultyLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _close_all(self) -> None:
        with self._lock:
            doomed = list(self._open)
            self._open.clear()
        for sock in doomed:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, 5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)  # the 5 s was for connecting: idle links stay open
            with self._lock:
                self._open.update((client, upstream))
            for source, sink, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, replies), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            with suppress(OSError):
                while data := source.recv(65536):
                    if self.delay:
                        time.sleep(self.delay)  # the fault being simulated: latency
                    if not self._forward(data, sink, replies):
                        return
        finally:
            with self._lock:
                self._open.difference_update((source, sink))
            _close(source)
            _close(sink)

    def _forward(self, data: bytes, sink: socket.socket, replies: bool) -> bool:
        """Send what an armed drop allows (all of it otherwise); False once dropped here."""
        with self._lock:
            budget = self._drop_budget if replies else None
            allowed = len(data) if budget is None else min(budget, len(data))
            dropping = budget is not None and budget == allowed
            if budget is not None:
                self._drop_budget = None if dropping else budget - allowed
        sink.sendall(data[:allowed])
        if dropping:
            self.drops += 1
            self._close_all()
        return not dropping


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
