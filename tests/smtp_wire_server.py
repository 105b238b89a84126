"""An aiosmtpd SMTP server that reports what happens on the wire, for Warren's
SMTP connection tests (tests/tests/email_wire.rs).

Run it as ``/usr/bin/python3 tests/smtp_wire_server.py [--port 0]
[--pipelining] [--max-connections K]``. Once listening it prints
``{"event":"ready","port":N}`` on stdout, then one JSON line per event:

* ``{"event":"connection","id":N}``: a client connected (and was greeted);
* ``{"event":"refused","id":N}``: a client connected while K others were
  open, and got ``421 4.7.0 Too many connections`` and a closed socket;
* ``{"event":"read","id":N,"commands":[...]}``: one read from the socket
  while in command mode, split into command lines (so pipelined commands show
  up together in one read);
* ``{"event":"message","id":N,"mail_from","rcpt_tos","message_id"}``: an
  accepted message;
* ``{"event":"closed","id":N}``: a connection ended.

``--pipelining`` advertises PIPELINING (RFC 2920) in the EHLO reply; without
it the server advertises what aiosmtpd does, which does not include it.
``--tls starttls|implicit --cert PEM --key PEM`` secures the connection: STARTTLS
offered and required before MAIL, or TLS from the first byte. The server
exits when its parent process goes away.
"""

import argparse
import asyncio
import email
import ssl
import time
from itertools import count

from aiosmtpd.smtp import SMTP

# The JSON-lines output and the orphan check of the tests' other server (this
# script's folder is on sys.path).
from smtp_sink import emit, exit_when_orphaned


class Handler:
    def __init__(self, pipelining):
        self.pipelining = pipelining

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            # Before the last line, which is the one without a dash.
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.content)
        emit({
            "event": "message",
            "id": server.connection_id,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "message_id": (parsed.get("Message-ID") or "").strip("<> "),
            "at": time.time(),
        })
        return "250 2.0.0 OK: queued"


class WireSMTP(SMTP):
    """aiosmtpd's server, plus the reads, the connections and a limit."""

    ids = count(1)
    open_connections = 0
    max_connections = None

    def connection_made(self, transport):
        self.connection_id = next(WireSMTP.ids)
        limit = WireSMTP.max_connections
        if limit is not None and WireSMTP.open_connections >= limit:
            self.refused = True
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            emit({"event": "refused", "id": self.connection_id})
            return
        self.refused = False
        WireSMTP.open_connections += 1
        emit({"event": "connection", "id": self.connection_id})
        super().connection_made(transport)

    def data_received(self, data):
        # In command mode (not inside a DATA payload), one read's command
        # lines: what the client wrote in one go, give or take TCP.
        if getattr(self, "_in_data", False) is False:
            lines = [line.decode("utf-8", "replace")
                     for line in data.split(b"\r\n") if line]
            emit({"event": "read", "id": self.connection_id, "commands": lines})
        super().data_received(data)

    async def smtp_DATA(self, arg):
        self._in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    def connection_lost(self, exc):
        if getattr(self, "refused", False):
            return
        WireSMTP.open_connections -= 1
        emit({"event": "closed", "id": self.connection_id})
        super().connection_lost(exc)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pipelining", action="store_true")
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--tls", choices=["starttls", "implicit"], default=None)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()

    WireSMTP.max_connections = args.max_connections
    handler = Handler(args.pipelining)
    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    options = {}
    if args.tls == "starttls":
        options = {"tls_context": context, "require_starttls": True}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: WireSMTP(handler, hostname="smtp-wire.test", **options),
        args.host,
        args.port,
        ssl=context if args.tls == "implicit" else None,
    )
    emit({"event": "ready", "port": server.sockets[0].getsockname()[1]})
    await exit_when_orphaned()


if __name__ == "__main__":
    asyncio.run(main())
