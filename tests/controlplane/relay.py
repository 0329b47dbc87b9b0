"""A TCP relay: ``python relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT [TAG]``.

The API server listens on loopback only. A pod on the real node reaches it the way
pods do, through the ``kubernetes`` Service, whose endpoint must be an address pods
can reach (Kubernetes refuses loopback endpoints): the node's bridge address. This
relay listens there and passes bytes, TLS included, to the API server untouched.
``TAG`` is ignored; it names the real node's state folder in the command line, where
the node's sweep finds (and ends) the relay of a killed run.

Standard library only: it runs as its own process, started by the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(host: str, port: int, target_host: str, target_port: int) -> None:
    async def handle(client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer),
                             _pipe(server_reader, client_writer))
        for writer in (client_writer, server_writer):
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    host, port, target_host, target_port = argv[1:5]
    asyncio.run(_serve(host, int(port), target_host, int(target_port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
