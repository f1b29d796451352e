"""A small round-robin HTTP/1.1 reverse proxy: the cluster's load balancer without nginx.

    python -m grader._proxy --port 8080 --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002

Exercise 10.4 runs the learner's app as several instances behind a load balancer. nginx is
the real thing and is used where it is installed; this proxy is there so that a laptop
without nginx can still run the exercise. It does what the checks rely on, as nginx's
`upstream` + `proxy_pass` do:
- per-request round robin: each request goes to the next instance in turn, even on one
  keep-alive connection from the client;
- keep-alive with the client, so that a client's connection pool works as it would with
  nginx; towards the instances one new connection per request (`Connection: close`), which
  keeps the proxy free of a connection pool and its stale-connection corner cases;
- bodies are streamed, never held whole: Content-Length and chunked both ways, and a
  response that ends when the instance closes (then the client's connection closes too);
- `X-Forwarded-For` gets the client's address appended; `Host` passes unchanged;
- an instance that refuses the connection is skipped for the next one and left out for
  `FAIL_SECONDS` (nginx's `proxy_next_upstream error`, `max_fails=1 fail_timeout=10s`);
  when none accepts, a 502 with a JSON `{"detail": ...}` body.
Not supported, as the checks need none of them: HTTP/2, TLS, Upgrade (WebSocket), and
HTTP/1.0 clients beyond one request per connection. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

CHUNK = 64 * 1024
IDLE_SECONDS = 75.0  # as nginx's keepalive_timeout: an idle client connection is closed
FAIL_SECONDS = 10.0
# Headers about one connection, not the message: never passed on. `Expect: 100-continue`
# is answered here; `Upgrade` is dropped so that an instance never switches protocols.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade", "expect"})

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


class BadMessage(Exception):
    """A request or response head that is not HTTP/1.x."""


@dataclass
class Head:
    """The start line and headers of a request or a response."""

    start: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    def tokens(self, name: str) -> set[str]:
        """The comma-separated values of header `name`, lower-cased (`Connection: close`)."""
        values = (v for n, v in self.headers if n.lower() == name)
        return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}

    def encode(self, extra: Sequence[tuple[str, str]] = ()) -> bytes:
        """The head as sent on: hop-by-hop headers out, `extra` in (replacing same names)."""
        drop = HOP_BY_HOP | self.tokens("connection") | {n.lower() for n, _ in extra}
        kept = [(n, v) for n, v in self.headers if n.lower() not in drop]
        lines = [self.start, *(f"{n}: {v}" for n, v in [*kept, *extra]), "", ""]
        return "\r\n".join(lines).encode("latin-1")


async def read_head(reader: Reader) -> Head | None:
    """The next head on the connection, or None if it closed cleanly before one began."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadMessage("the connection closed in the middle of a head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage("a head larger than 64 KiB") from None
    start, *lines = raw.decode("latin-1").strip("\r\n").split("\r\n")
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise BadMessage(f"a malformed header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return Head(start, headers)


async def copy_exact(reader: Reader, writer: Writer, n: int) -> None:
    while n > 0:
        chunk = await reader.read(min(n, CHUNK))
        if not chunk:
            raise ConnectionError("the connection closed in the middle of a body")
        writer.write(chunk)
        await writer.drain()
        n -= len(chunk)


async def copy_chunked(reader: Reader, writer: Writer) -> None:
    """Pass a chunked body on as it is, chunk by chunk, trailers included."""
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        await copy_exact(reader, writer, size + 2)  # the data and the CRLF after it
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        writer.write(line)
    writer.write(line)
    await writer.drain()


async def copy_body(head: Head, reader: Reader, writer: Writer, *, to_eof: bool) -> None:
    """Pass on the body that follows `head`: chunked, Content-Length, or (a response
    with neither, `to_eof`) everything until the connection closes."""
    length = head.get("content-length")
    if "chunked" in head.tokens("transfer-encoding"):
        await copy_chunked(reader, writer)
    elif length is not None:
        await copy_exact(reader, writer, int(length))
    elif to_eof:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()


def error_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = Head(
        f"HTTP/1.1 {status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return head.encode([("Connection", "close")]) + body


class Proxy:
    """Round robin over `upstreams`, one request at a time per client connection."""

    def __init__(self, upstreams: Sequence[tuple[str, int]], timeout: float) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self._turn = itertools.count()
        self._down_until = [0.0] * len(self.upstreams)

    async def serve_client(self, reader: Reader, writer: Writer) -> None:
        """Answer the requests of one client connection until it closes or cannot go on."""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "unknown"
        try:
            while True:
                try:
                    request = await asyncio.wait_for(read_head(reader), IDLE_SECONDS)
                except TimeoutError:
                    break
                if request is None or not await self.forward(request, reader, writer, client):
                    break
        except BadMessage as exc:
            writer.write(error_response(400, "Bad Request", str(exc)))
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError):
            pass  # a connection broke mid-message: all we can do is close the client's
        finally:
            writer.close()

    async def forward(self, request: Head, reader: Reader, writer: Writer, client: str) -> bool:
        """Pass one request to the next instance and its response back; whether the client
        connection can carry another request."""
        method, _target, version = [*request.start.split(" ", 2), "", ""][:3]
        if not version.startswith("HTTP/1."):
            raise BadMessage(f"not an HTTP/1.x request line: {request.start[:80]!r}")
        keep_alive = version == "HTTP/1.1" and "close" not in request.tokens("connection")
        upstream = await self.connect()
        if isinstance(upstream, str):
            writer.write(error_response(502, "Bad Gateway", upstream))
            return False  # its body, if any, is still unread: this connection is done
        up_reader, up_writer = upstream
        try:
            if "100-continue" in request.tokens("expect"):
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            forwarded = ", ".join(filter(None, [request.get("x-forwarded-for"), client]))
            extra = [("X-Forwarded-For", forwarded), ("Connection", "close")]
            up_writer.write(request.encode(extra))
            await copy_body(request, reader, up_writer, to_eof=False)
            response = await self.response_head(up_reader)
            if isinstance(response, bytes):
                writer.write(response)
                return False
            response.start = "HTTP/1.1 " + response.start.split(" ", 1)[1]  # we speak 1.1
            status = int(response.start.split(" ", 2)[1])
            bodyless = method == "HEAD" or status in (204, 304)
            chunked = "chunked" in response.tokens("transfer-encoding")
            framed = bodyless or chunked or response.get("content-length") is not None
            keep_alive = keep_alive and framed  # else only closing tells where the body ends
            writer.write(response.encode([("Connection", "keep-alive" if keep_alive else "close")]))
            if not bodyless:
                await copy_body(response, up_reader, writer, to_eof=True)
            await writer.drain()
            return keep_alive
        finally:
            up_writer.close()

    async def connect(self) -> tuple[Reader, Writer] | str:
        """A connection to the next instance that accepts one, or why none did.

        The turn goes round the instances that have not failed lately, so that these share
        the load evenly; those that have are tried last, as with nginx."""
        now = time.monotonic()
        live = [i for i, until in enumerate(self._down_until) if until <= now]
        down = [i for i, until in enumerate(self._down_until) if until > now]
        turn = next(self._turn) % max(1, len(live))
        order = live[turn:] + live[:turn] + down
        failures = []
        for index in order:
            host, port = self.upstreams[index]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
            except (OSError, TimeoutError) as exc:
                self._down_until[index] = time.monotonic() + FAIL_SECONDS
                why = "timed out" if isinstance(exc, TimeoutError) else describe(exc)
                failures.append(f"{host}:{port} ({why})")
                print(f"proxy: upstream {host}:{port} failed: {why}", file=sys.stderr, flush=True)
        return "no instance accepted the connection: " + ", ".join(failures)

    async def response_head(self, reader: Reader) -> Head | bytes:
        """The instance's response head, past any 1xx interim one; or the error to send."""
        try:
            while True:
                head = await asyncio.wait_for(read_head(reader), self.timeout)
                if head is None:
                    raise BadMessage("the connection closed before a response")
                if not head.start.split(" ", 2)[1].startswith("1"):
                    return head
        except TimeoutError:
            detail = f"the instance sent no response within {self.timeout:g} s"
            return error_response(504, "Gateway Timeout", detail)
        except (OSError, BadMessage, IndexError) as exc:  # IndexError: no status
            return error_response(502, "Bad Gateway", f"the instance's response broke: {exc}")


def describe(exc: OSError) -> str:
    """`connection refused`, not asyncio's `Connect call failed ('127.0.0.1', 8001)`."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def parse_address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(host: str, port: int, proxy: Proxy) -> None:
    server = await asyncio.start_server(proxy.serve_client, host, port)
    upstreams = " ".join(f"{h}:{p}" for h, p in proxy.upstreams)
    print(f"proxy: listening on http://{host}:{port}, round robin over {upstreams}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader._proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", type=parse_address, action="append", required=True, metavar="HOST:PORT"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="connect and response head")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, Proxy(args.upstream, args.timeout)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, say
        print(f"proxy: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
