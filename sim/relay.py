"""The local backend's links where the kernel cannot shape them: a relay in front of every device.

Each device gets two faces on loopback, both applying that device's link:
- the *inbound* face is the address the device advertises; it forwards to the node's real port, bytes
  towards the node through the link's downlink and bytes from it through its uplink;
- the *proxy* face is an HTTP CONNECT proxy the node's own outgoing calls go through (gRPC honours the
  ``grpc_proxy`` environment variable), bytes out through its uplink, bytes back through its downlink.

So a message from device A to device B crosses A's uplink and B's downlink, as on two access links
joined by a fast core. A partition blackholes what crosses it: a new connection across gets no answer,
an open one stops delivering until the heal (TCP would keep retrying; a call runs into its deadline).
Everything runs on one asyncio loop in a thread of the simulator, raised in priority where allowed.
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import zlib
from dataclasses import dataclass, field

from crossback.config.scenario import Link

from .link_model import Direction, Shape

CHUNK = 16 << 10  # bytes read at a time: the granularity of shaping
QUEUE_BYTES = 256 << 10  # bytes a connection direction may hold in the link's queue before reading pauses
HEADER_LIMIT = 8 << 10
# asyncio's epoll timeouts are whole milliseconds rounded up: a timed delivery wakes about half a
# millisecond late on average, so it is asked for that much early (measured in sim/fidelity.py)
TIMER_SLACK = 0.0006


def raise_priority(tid: int = 0) -> None:
    """The relay (and the probe that measures it) stand for the network, which does not queue behind the
    devices' training: the highest priority this process may give (root: -20), else as it is."""
    for nice in (-20, -10):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            return
        except (OSError, AttributeError):
            continue


@dataclass
class DeviceFaces:
    device: str
    link: Link
    up: Direction
    down: Direction
    inbound: str = ""  # host:port peers dial
    proxy: str = ""  # host:port of the CONNECT proxy
    target: tuple[str, int] | None = None  # the node's real listening address
    tunnels: set = field(default_factory=set)
    kernel_rate: bool = False  # the kernel enforces the rates; the relay adds latency, jitter and loss
    refused: int = 0  # connections the inbound face could not forward (the node was down)
    blackholed: int = 0  # connections held across a partition


class _Tunnel:
    """One relayed connection: which devices it joins and whether a partition holds it."""

    def __init__(self, src: str, dst: str | None):
        self.src, self.dst = src, dst
        self.open = asyncio.Event()
        self.open.set()
        self.writers: list[asyncio.StreamWriter] = []


class Relay:
    def __init__(self, host: str = "127.0.0.1", seed: int = 0):
        self.host, self.seed = host, seed
        self.overhead = 0.0  # see calibrate
        self.devices: dict[str, DeviceFaces] = {}
        self._by_inbound: dict[str, str] = {}
        self._blocked: set[frozenset] = set()
        self._loop = asyncio.new_event_loop()
        self._servers = []
        self._thread = threading.Thread(target=self._run, name="sim-relay", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    # ------------------------------------------------------------ control (any thread)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def add_device(self, device: str, link: Link, kernel_rate: bool = False) -> DeviceFaces:
        """Open both faces of ``device`` with ``link``; its faces' addresses are in the result.
        ``kernel_rate``: the kernel enforces the link's rates (``.netns``); the relay only delays."""
        rng = random.Random(zlib.crc32(f"{self.seed}:{device}".encode()))
        faces = DeviceFaces(device, link, Direction(Shape.of(link, True, kernel_rate), rng),
                            Direction(Shape.of(link, False, kernel_rate), rng), kernel_rate=kernel_rate)
        faces.up.overhead = faces.down.overhead = self.overhead
        self.devices[device] = faces
        self._call(self._open(faces))
        self._by_inbound[faces.inbound] = device
        return faces

    def calibrate(self, overhead: float) -> None:
        """The path's own one-way time (half the round trip of an unshaped probe): every link's latency
        is added less this, so a link measures as configured, not as configured plus the relay's hops."""
        self.overhead = max(0.0, overhead)
        for faces in self.devices.values():
            faces.up.overhead = faces.down.overhead = self.overhead

    def set_target(self, device: str, host: str, port: int) -> None:
        """Where ``device``'s node listens now (it changes when the node restarts)."""
        self.devices[device].target = (host, port)

    def set_link(self, device: str, link: Link) -> None:
        faces = self.devices[device]
        faces.link = link
        faces.up.set(Shape.of(link, True, faces.kernel_rate))
        faces.down.set(Shape.of(link, False, faces.kernel_rate))

    def partition(self, side_a, side_b) -> None:
        pairs = {frozenset((a, b)) for a in side_a for b in side_b}
        self._loop.call_soon_threadsafe(self._apply_blocks, pairs, True)

    def heal(self, side_a, side_b) -> None:
        pairs = {frozenset((a, b)) for a in side_a for b in side_b}
        self._loop.call_soon_threadsafe(self._apply_blocks, pairs, False)

    def counters(self) -> dict:
        """Bytes each device's link carried each way, retransmissions emulated, connections refused."""
        return {d: {"link": f.link.name, "up_bytes": f.up.bytes, "down_bytes": f.down.bytes,
                    "up_retransmits": f.up.retransmits, "down_retransmits": f.down.retransmits,
                    "refused": f.refused, "blackholed": f.blackholed} for d, f in self.devices.items()}

    def close(self) -> None:
        async def shutdown():
            for server in self._servers:
                server.close()
            for faces in self.devices.values():
                for tunnel in list(faces.tunnels):
                    for w in tunnel.writers:
                        w.close()
            await asyncio.sleep(0.05)  # the transports see their connections lost
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            self._call(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        raise_priority(threading.get_native_id())
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    async def _open(self, faces: DeviceFaces) -> None:
        inbound = await asyncio.start_server(lambda r, w: self._inbound(faces, r, w), self.host, 0)
        proxy = await asyncio.start_server(lambda r, w: self._proxy(faces, r, w), self.host, 0)
        self._servers += [inbound, proxy]
        faces.inbound = f"{self.host}:{inbound.sockets[0].getsockname()[1]}"
        faces.proxy = f"{self.host}:{proxy.sockets[0].getsockname()[1]}"

    def _apply_blocks(self, pairs: set, block: bool) -> None:
        self._blocked = (self._blocked | pairs) if block else (self._blocked - pairs)
        for faces in self.devices.values():
            for tunnel in faces.tunnels:
                if tunnel.dst is not None and frozenset((tunnel.src, tunnel.dst)) in pairs:
                    (tunnel.open.clear if block else tunnel.open.set)()

    def _crosses(self, a: str, b: str | None) -> bool:
        return b is not None and frozenset((a, b)) in self._blocked

    async def _inbound(self, faces: DeviceFaces, reader, writer) -> None:
        if faces.target is None:
            faces.refused += 1
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*faces.target)
        except OSError:
            faces.refused += 1
            writer.close()
            return
        tunnel = _Tunnel(faces.device, None)
        await self._pump(faces, tunnel, (reader, writer, faces.down), (up_r, up_w, faces.up))

    async def _proxy(self, faces: DeviceFaces, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(head) > HEADER_LIMIT or len(parts) != 3 or parts[0] != b"CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        address = parts[1].decode("ascii", "replace")
        dst = self._by_inbound.get(address)
        tunnel = _Tunnel(faces.device, dst)
        faces.tunnels.add(tunnel)
        try:
            if self._crosses(faces.device, dst):  # blackholed: no answer until the heal or the caller gives up
                faces.blackholed += 1
                tunnel.writers.append(writer)
                while self._crosses(faces.device, dst):
                    if reader.at_eof() or writer.is_closing():
                        return
                    try:
                        await asyncio.wait_for(reader.read(1), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    if reader.at_eof():
                        return
            host, _, port = address.rpartition(":")
            try:
                up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
            except (OSError, ValueError):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self._pump(faces, tunnel, (reader, writer, faces.up), (up_r, up_w, faces.down))
        finally:
            faces.tunnels.discard(tunnel)

    async def _pump(self, faces: DeviceFaces, tunnel: _Tunnel, a, b) -> None:
        """Relay both ways: bytes read from ``a`` go out through ``a``'s direction to ``b``, and back."""
        (ar, aw, a_dir), (br, bw, b_dir) = a, b
        tunnel.writers += [aw, bw]
        faces.tunnels.add(tunnel)
        try:
            await asyncio.gather(self._one_way(ar, bw, a_dir, tunnel), self._one_way(br, aw, b_dir, tunnel))
        finally:
            faces.tunnels.discard(tunnel)
            for w in (aw, bw):
                w.close()

    async def _one_way(self, reader, writer, direction: Direction, tunnel: _Tunnel) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        held = asyncio.Semaphore(max(1, QUEUE_BYTES // CHUNK))

        async def deliver():
            last = 0.0
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                last = max(last, due)
                wait = last - time.monotonic() - TIMER_SLACK
                if wait > 0:
                    await asyncio.sleep(wait)
                await tunnel.open.wait()
                held.release()
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):  # the far end is gone: so is this connection
                    for w in tunnel.writers:
                        w.close()
                    for _ in range(QUEUE_BYTES // CHUNK + 1):
                        held.release()
                    return
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                await held.acquire()
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                due = direction.delivery(len(data), time.monotonic())
                queue.put_nowait((due, data))
        finally:
            queue.put_nowait(None)
            await sender
