"""`kochat label serve`: the web app under uvicorn, one server per project.

A second server on the same project is refused: it holds an exclusive lock on `serve.lock` for its whole life
(the kernel lets go of it when the process dies, even by kill -9, so a crash leaves nothing to clean up).
Bound to 127.0.0.1 unless told otherwise; any other address needs invites first, since the page then reaches
other machines.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kochat_data.errors import UsageError
from kochat_human.project import open_project
from kochat_human.store import LabelStore

LOCK = "serve.lock"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@contextmanager
def serving_lock(project: Path) -> Iterator[None]:
    path = Path(project) / LOCK
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"{project}: already served by `kochat label serve` (pid {holder}); stop that one first, or open its "
                         "links") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a port in use is one line, not a server's traceback."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn writes a response's head and body apart; with Nagle's algorithm on, the body of every reply on a kept-alive
    # connection waited for the client's delayed ACK (~40 ms each, measured). Accepted sockets inherit this option.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); choose another --port") from None
    sock.listen(128)
    return sock


def public_address(host: str, port: int) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def serve(project: Path, host: str = "127.0.0.1", port: int = 8000, announce: Callable[[LabelStore, str], None] = lambda store, url: None,
          create_app: Callable | None = None) -> None:
    """Serve a project until Ctrl-C; `announce(store, address)` once the port is open. `create_app(project, store)`
    builds the app (the label app by default)."""
    import uvicorn

    if create_app is None:
        from kochat_human.app import create_app
    store = open_project(project)
    if host not in LOOPBACK and not store.annotators():
        raise UsageError(f"--host {host} opens the page to other machines: invite people first (`kochat label invite {project} "
                         "NAME …`), so that only their links work")
    if not 0 <= port < 65536:
        raise UsageError(f"--port: expected 0 … 65535 (0: any free port), got {port}")
    with serving_lock(project):
        sock = bind(host, port)
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(project, store), log_level="warning", access_log=False))
        announce(store, public_address(host, port))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down gracefully, then raises the signal again: Ctrl-C is how a server stops
            pass
