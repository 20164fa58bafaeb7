#!/usr/bin/env python3
"""Forward local ports to ports on a lab host, through `docker exec`.

    scripts/lab-forward.py paycore-ledger1 9090 9093 --optional=3000

Prometheus and Alertmanager listen only on the lab host's loopback and its
WireGuard address, Grafana only on the WireGuard address (the firewall denies
everything else), so a browser on this machine cannot reach them directly.
This listens on 127.0.0.1:<port> here and relays each connection to the
address that listens on <port> inside the container (loopback if it does,
else the first one `ss` lists) over a `docker exec` pipe, like
`kubectl port-forward`: no port is opened in the lab. A port given with
--optional= is skipped, saying so, when nothing listens on it (Grafana is
only installed where its downloads are reachable: lab_upstream_downloads).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

# Runs inside the lab host (python3 is in the lab image): pipes stdin/stdout
# to a TCP connection to the given address and port.
RELAY = """
import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := sys.stdin.buffer.read1(65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


async def pipe(reader: asyncio.StreamReader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        writer.close()


def listening_address(container: str, port: int) -> str | None:
    """The address inside the container to relay to: loopback if something
    listens there on the port, else the first listening address, else None."""
    done = subprocess.run(
        ["docker", "exec", container, "ss", "-Hltn", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"lab-forward: cannot look into {container}: {done.stderr.strip()}")
    addresses = [line.split()[3].rsplit(":", 1)[0].strip("[]") for line in done.stdout.splitlines()]
    if not addresses:
        return None
    if {"*", "0.0.0.0", "::"} & set(addresses):  # noqa: S104 (read, not bound)
        return "127.0.0.1"  # listens on every address, loopback included
    for loopback in ("127.0.0.1", "::1"):
        if loopback in addresses:
            return loopback
    return addresses[0]


async def relay(container: str, address: str, port: int, client_r, client_w) -> None:
    command = ["docker", "exec", "-i", container, "python3", "-c", RELAY, address, str(port)]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.gather(pipe(client_r, proc.stdin), pipe(proc.stdout, client_w))
    await proc.wait()


async def main(container: str, ports: list[tuple[int, bool]]) -> None:
    servers = []
    for port, optional in ports:
        address = listening_address(container, port)
        if address is None:
            if optional:
                print(
                    f"port {port}: nothing listens on it in {container}, not forwarded", flush=True
                )
                continue
            address = "127.0.0.1"  # relay anyway: the service may come up later
        servers.append(
            await asyncio.start_server(
                lambda r, w, address=address, port=port: relay(container, address, port, r, w),
                "127.0.0.1",
                port,
            )
        )
        print(f"http://127.0.0.1:{port} -> {container} {address}:{port}", flush=True)
    if not servers:
        sys.exit("lab-forward: nothing to forward")
    print("forwarding; Ctrl-C to stop", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def parse(args: list[str]) -> list[tuple[int, bool]]:
    ports = []
    for arg in args:
        optional = arg.startswith("--optional=")
        value = arg.removeprefix("--optional=")
        if not value.isdigit():
            raise ValueError(arg)
        ports.append((int(value), optional))
    return ports


if __name__ == "__main__":
    try:
        ports = parse(sys.argv[2:])
    except ValueError:
        ports = []
    if len(sys.argv) < 3 or not ports:
        sys.exit(f"usage: {sys.argv[0]} CONTAINER PORT|--optional=PORT ...")
    try:
        asyncio.run(main(sys.argv[1], ports))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        sys.exit(f"lab-forward: {exc.strerror or exc}")
