#!/usr/bin/env python3
"""bench/blackhole.py: a TCP proxy that can turn into a black hole.

    python3 bench/blackhole.py LISTEN_PORT TARGET_HOST TARGET_PORT

Listens on 127.0.0.1:LISTEN_PORT and forwards every connection to
TARGET_HOST:TARGET_PORT until it receives SIGUSR1. From then on it is a
black hole, as a Redis behind a dead network path looks to its clients:

- connections already open stay open, but nothing is forwarded either way
  (what the client sends is read and dropped, what the server answers is
  dropped): requests in flight and new ones get no answer and no error;
- new connections are accepted (the TCP handshake succeeds) and never
  answered.

SIGUSR2 switches back to forwarding (for new connections; the ones that
were black-holed stay silent). Prints "listening <port>" once ready, and
"blackhole on" / "blackhole off" on each switch. Used by bench/degraded.sh.
"""

import asyncio
import signal
import sys


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.blackhole = False

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copies reader to writer while not black-holed; drops the bytes after."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.blackhole:
                    continue  # read and dropped: the peer sees silence
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if not self.blackhole:
            try:
                writer.close()
            except OSError:
                pass

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self.serve(client_r, client_w)
        except asyncio.CancelledError:
            pass  # shutting down: the connections close with the process

    async def serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.blackhole:
            await self.swallow(client_r)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self.pump(client_r, server_w), self.pump(server_r, client_w))
        if self.blackhole:
            # Keep the client's connection open and silent until it gives up.
            await self.swallow(client_r)

    @staticmethod
    async def swallow(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass

    def set_blackhole(self, on: bool) -> None:
        self.blackhole = on
        print("blackhole on" if on else "blackhole off", flush=True)


async def main() -> None:
    listen_port, target_host, target_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    proxy = Proxy(target_host, target_port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.set_blackhole, True)
    loop.add_signal_handler(signal.SIGUSR2, proxy.set_blackhole, False)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen_port)
    print(f"listening {listen_port}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main())
