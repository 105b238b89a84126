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
offered and required before MAIL, or TLS from the first byte.
``--auth USER:PASSWORD`` requires AUTH before MAIL (only over TLS), offering
PLAIN and LOGIN, or only the one ``--auth-mechanism PLAIN|LOGIN`` names;
each attempt is reported as ``{"event":"auth","id":N,"mechanism","login",
"success"}`` (never the password). The server exits when its parent process
goes away.
"""

import argparse
import asyncio
import logging
import warnings
import email
import ssl
import time
from itertools import count

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

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


class Authenticator:
    """Accepts one login and password, and reports every attempt."""

    def __init__(self, login, password):
        self.login = login.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == self.login
              and auth_data.password == self.password)
        login = auth_data.login.decode("utf-8", "replace") \
            if isinstance(auth_data, LoginPassword) else None
        emit({"event": "auth", "id": server.connection_id,
              "mechanism": mechanism, "login": login, "success": ok})
        return AuthResult(success=ok, handled=False)


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
    parser.add_argument("--auth", metavar="USER:PASSWORD")
    parser.add_argument("--auth-mechanism", choices=["PLAIN", "LOGIN"])
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
    if args.auth:
        login, password = args.auth.split(":", 1)
        options["authenticator"] = Authenticator(login, password)
        options["auth_required"] = True
        # With implicit TLS the whole connection is already secured;
        # aiosmtpd, not knowing it, warns that AUTH does not require TLS.
        options["auth_require_tls"] = args.tls == "starttls"
        warnings.filterwarnings("ignore", module="aiosmtpd")
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        if args.auth_mechanism:
            options["auth_exclude_mechanism"] = \
                {"PLAIN", "LOGIN"} - {args.auth_mechanism}
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
