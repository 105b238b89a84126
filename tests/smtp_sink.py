"""A real SMTP server for Warren's integration tests, steered by recipient names.

Run it as ``/usr/bin/python3 tests/smtp_sink.py [--host 127.0.0.1] [--port 0]``.
Once listening it prints ``{"event":"ready","port":N}`` on stdout, then one JSON
line per DATA outcome:

* ``{"event":"message","mail_from","rcpt_tos","data","at"}`` for an accepted mail
  (``data`` is the whole raw message, decoded as UTF-8);
* ``{"event":"rejected","code","mail_from","rcpt_tos","at"}`` for a refused one;
* ``{"event":"holding","mail_from","rcpt_tos","at"}`` when it starts holding back
  the reply to a ``slow`` or ``hold`` DATA: the client is then mid-``DATA``,
  waiting for the final answer (the moment to kill it or send it SIGTERM).

Behaviour is chosen per message by the recipients' local parts, so tests running
in parallel each steer their own mail and never interfere:

* ``reject550...``        -> ``550 5.7.1 Rejected by test sink``
* ``tempfail451x<N>...``  -> the first N DATA attempts for that address get
  ``451 4.3.0 Try again later``; later attempts are accepted
* ``slow<MS>...``         -> wait MS milliseconds before answering; if the client
  has disconnected meanwhile, print ``{"event":"aborted",...}`` and keep nothing
* ``hold...``             -> like ``slow``, but wait until the test releases the
  address by writing ``{"release":"<address>"}`` to the server's stdin (every
  hold of that address, now and later, is then answered at once)
* anything else           -> accepted

The server exits when its parent process goes away.
"""

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import Counter

from aiosmtpd.smtp import SMTP

TEMPFAIL = re.compile(r"tempfail451x(\d+)")
SLOW = re.compile(r"slow(\d+)")
HOLD = "hold"


def emit(event):
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def local_part(address):
    return address.rsplit("@", 1)[0].lower()


class Handler:
    def __init__(self):
        # DATA attempts seen so far per tempfail recipient, across connections.
        self.attempts = Counter()
        # One event per held address, set when the test releases it.
        self.released = {}

    def release_event(self, address):
        return self.released.setdefault(address.lower(), asyncio.Event())

    async def hold(self, rcpts, delay_ms):
        held = [r for r in rcpts if local_part(r).startswith(HOLD)]
        if held:
            await asyncio.gather(*(self.release_event(r).wait() for r in held))
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)

    async def handle_DATA(self, server, session, envelope):
        rcpts = list(envelope.rcpt_tos)
        locals_ = [local_part(r) for r in rcpts]

        delay_ms = max((int(m.group(1)) for m in map(SLOW.match, locals_) if m), default=0)
        if delay_ms or any(lp.startswith(HOLD) for lp in locals_):
            aborted = {"event": "aborted", "mail_from": envelope.mail_from,
                       "rcpt_tos": rcpts}
            emit({"event": "holding", "mail_from": envelope.mail_from,
                  "rcpt_tos": rcpts, "at": time.time()})
            try:
                await self.hold(rcpts, delay_ms)
            except asyncio.CancelledError:
                # aiosmtpd cancels the handler when the client disconnects.
                emit({**aborted, "at": time.time()})
                raise
            transport = getattr(server, "transport", None)
            if transport is None or transport.is_closing():
                # The client vanished before our final reply: like a server
                # whose client never saw the 250, keep nothing.
                emit({**aborted, "at": time.time()})
                return "421 4.4.2 Client went away"

        code = None
        if any(lp.startswith("reject550") for lp in locals_):
            code = 550
        else:
            for rcpt, lp in zip(rcpts, locals_):
                m = TEMPFAIL.match(lp)
                if m:
                    key = rcpt.lower()
                    self.attempts[key] += 1
                    if self.attempts[key] <= int(m.group(1)):
                        code = 451

        base = {"mail_from": envelope.mail_from, "rcpt_tos": rcpts}
        if code is not None:
            emit({"event": "rejected", "code": code, **base, "at": time.time()})
            if code == 550:
                return "550 5.7.1 Rejected by test sink"
            return "451 4.3.0 Try again later"

        data = envelope.content.decode("utf-8", errors="replace")
        emit({"event": "message", **base, "data": data, "at": time.time()})
        return "250 2.0.0 OK: queued"


async def read_releases(handler):
    """Reads ``{"release":"<address>"}`` lines from stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            address = json.loads(line)["release"]
        except (ValueError, KeyError, TypeError):
            sys.stderr.write(f"smtp sink: unreadable command {line!r}\n")
            continue
        handler.release_event(address).set()


async def exit_when_orphaned():
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1)
    os._exit(0)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="smtp-sink.test",  # an explicit name spares a slow FQDN lookup
            data_size_limit=50 * 1024 * 1024,
            enable_SMTPUTF8=True,
        ),
        args.host,
        args.port,
    )
    emit({"event": "ready", "port": server.sockets[0].getsockname()[1]})
    releases = asyncio.create_task(read_releases(handler))
    await exit_when_orphaned()
    releases.cancel()


if __name__ == "__main__":
    asyncio.run(main())
