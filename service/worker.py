"""The gunicorn worker class of the service: gthread, made safe to face clients.

gunicorn's threaded worker reads a request with a blocking socket and no
timeout, so a client that sends its headers or body a byte at a time keeps
one of the worker's few threads for as long as it likes; a handful of such
clients stop a worker. It lingers over closing connections on its main loop,
which a client that never hangs up stalls. And on SIGTERM the worker stops
accepting but keeps its listening socket open until it exits, so the kernel
goes on completing new connections that are then reset without an answer.

``VisionWorker`` closes these gaps:

- every request must arrive within ``VISION_CLIENT_TIMEOUT`` seconds of its
  first byte, extended by one second per ``MIN_UPLOAD_RATE`` bytes received,
  so a slow but steady upload still gets through while a trickle does not.
  A client too slow with its headers is disconnected; one too slow with its
  body gets ``408 request-timeout`` (see ``service.errors``);
- it closes connections on the request's thread instead of gunicorn's main
  loop, whose lingering close a client could stall for everyone;
- a request's thread serves the next request of its kept-alive connection
  itself when it comes within ``NEXT_REQUEST_WAIT`` and no other connection
  waits for a thread, instead of passing the connection back to the main
  loop and from there to another thread;
- on shutdown it serves the connections the kernel had already queued and
  then closes its listening sockets, so later connections are refused and
  a client or load balancer can go straight to another replica.

This module is imported by the gunicorn master (``gunicorn.conf.py``), so it
must not import onnxruntime: the workers fork from the master.
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import threading
import time
from typing import Any

from gunicorn.util import close_graceful
from gunicorn.workers.gthread import TConn, ThreadWorker

from service.errors import ClientTooSlow
from service.settings import Settings

logger = logging.getLogger(__name__)

# Bytes per second a client must keep up to earn more time than the timeout:
# about 128 kbit/s, below a poor mobile uplink, far above a trickle.
MIN_UPLOAD_RATE = 16 * 1024

# How long a request's thread waits on its kept-alive connection for the
# next request before handing the connection back to the worker's poller.
# A client that sends requests back to back (a batch job, a proxy's pool)
# has the next one there within a millisecond; serving it on the same
# thread skips two hand-offs between threads. A slower client only holds
# an idle thread this long, and none waits while another connection is
# queued for a thread.
NEXT_REQUEST_WAIT = 0.005


class PacedSocket(socket.socket):
    """A client socket whose blocking reads share one deadline per request.

    gthread calls ``setblocking(True)`` each time a thread takes the
    connection up for a request; that starts the request's clock. Reads then
    wait at most until the deadline and raise ``ClientTooSlow`` after it.
    Writes get the plain timeout, so a client that stops reading its answer
    is dropped too. An explicit ``settimeout`` (gunicorn's graceful close
    does one) turns the pacing off until the next request. A timeout of 0
    leaves the socket as gunicorn made it: blocking without a limit.
    """

    client_timeout: float = 0.0

    @classmethod
    def adopt(cls, sock: socket.socket, client_timeout: float) -> PacedSocket:
        paced = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        paced.client_timeout = client_timeout
        return paced

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paced = False
        self._started = 0.0
        self._received = 0
        # Set when a request was given up, and whether an answer went out
        # after that (the 408), which the close must not cut short.
        self.given_up = False
        self.answered = False
        # gunicorn's request being read, whose answer must close the
        # connection once the request is given up; gunicorn ignores a
        # Connection header set by the app.
        self.request: Any = None

    def setblocking(self, flag: bool) -> None:
        if self.fileno() == -1:
            # Closed already by VisionWorker.handle; gunicorn's own close
            # comes after and must find nothing to do.
            return
        if not flag:
            self._paced = False
            super().setblocking(False)
            return
        if not self.client_timeout:
            super().setblocking(True)
            return
        self._paced = True
        self._started = time.monotonic()
        self._received = 0
        super().settimeout(self.client_timeout)

    def settimeout(self, value: float | None) -> None:
        self._paced = False
        super().settimeout(value)

    def _wait_budget(self) -> float:
        deadline = (
            self._started + self.client_timeout + self._received / MIN_UPLOAD_RATE
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._too_slow()
        return remaining

    def _too_slow(self) -> ClientTooSlow:
        self.given_up = True
        if self.request is not None:
            self.request.must_close = True
        try:
            peer = self.getpeername()
        except OSError:
            peer = "a client"
        logger.info(
            "%s sent %d bytes of a request in %.1f s, too slowly; giving it up",
            peer,
            self._received,
            time.monotonic() - self._started,
        )
        return ClientTooSlow(
            f"The request did not arrive within {self.client_timeout:g} s "
            f"(plus 1 s per {MIN_UPLOAD_RATE} bytes received)."
        )

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self._paced:
            return super().recv(bufsize, flags)
        super().settimeout(self._wait_budget())
        try:
            data = super().recv(bufsize, flags)
        except TimeoutError:
            raise self._too_slow() from None
        self._received += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if not self._paced:
            return super().recv_into(buffer, nbytes, flags)
        super().settimeout(self._wait_budget())
        try:
            count = super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            raise self._too_slow() from None
        self._received += count
        return count

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self._paced:
            super().settimeout(self.client_timeout)
        self.answered = self.given_up
        super().sendall(data, flags)


class VisionWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with a per-request read deadline, closes off the main loop and
    refusal on shutdown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout = Settings.from_env().client_timeout
        # Connections handed to the thread pool and not yet taken up by a
        # thread: while there are any, no thread keeps its own connection.
        self._queued = 0
        self._queued_lock = threading.Lock()

    def enqueue_req(self, conn: TConn) -> None:
        # A connection comes here first from accept() and again from the
        # keep-alive poller; it is adopted once.
        if not isinstance(conn.sock, PacedSocket):
            conn.sock = PacedSocket.adopt(conn.sock, self.client_timeout)
        with self._queued_lock:
            self._queued += 1
        super().enqueue_req(conn)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        conn.sock.request = req
        try:
            return super().handle_request(req, conn)
        finally:
            conn.sock.request = None

    def handle(self, conn: TConn) -> Any:
        with self._queued_lock:
            self._queued -= 1
        keep_alive = super().handle(conn)
        while keep_alive is True and self.alive and self._next_request_comes(conn):
            keep_alive = super().handle(conn)
        if keep_alive is False:
            # gunicorn closes on its main thread, lingering up to 2 s for the
            # client to hang up so that unread request bytes cannot turn into
            # a reset that cuts off the answer. A client that does not hang
            # up would stall every connection of the worker meanwhile, so the
            # close happens here, on this request's thread. A client given up
            # before any answer gets no linger at all.
            sock = conn.sock
            if sock.given_up and not sock.answered:
                sock.close()
            else:
                close_graceful(sock)
        return keep_alive

    def _next_request_comes(self, conn: TConn) -> bool:
        """Whether this thread should serve the connection's next request:
        no other connection waits for a thread, and the request is here or
        comes within ``NEXT_REQUEST_WAIT`` (bytes read ahead, or the socket
        readable; a client hanging up counts too, found out by the parser).
        """
        if self._queued:
            return False
        if conn.parser.unreader.buf.getbuffer().nbytes:
            return True
        # poll, not select: a busy worker's descriptors can pass select's
        # limit of 1024.
        waiting = select.poll()
        waiting.register(conn.sock, select.POLLIN)
        return bool(waiting.poll(NEXT_REQUEST_WAIT * 1000))

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if enabled or self.alive:
            return
        # Stopping. The master has closed its copies of the listening sockets;
        # once this worker closes its own, connecting is refused. Connections
        # the kernel completed before that are accepted and answered first.
        for listener in self.sockets:
            with selectors.DefaultSelector() as waiting:
                waiting.register(listener, selectors.EVENT_READ)
                while waiting.select(timeout=0):
                    before = self.nr_conns
                    self.accept(listener)
                    if self.nr_conns == before:
                        break
            listener.close()
