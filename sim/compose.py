"""The compose backend: every device a container of crossback's image on one Docker engine, driven through
the Engine API (the ``docker`` SDK for Python), and the whole population written out as a compose file.

Each device is one container on the run's own bridge network, at its own address: its profile becomes the
container's limits (``cpus`` a CPU quota, ``memory_mib`` a memory limit without swap), and its node is the
container's main process, the image's unmodified `crossback node`. The run folder is mounted at the same
path inside every container, so configs, checkpoints and logs are where the report reads them. Links go
through the same relay as the local backend's (latency, jitter, loss, rates, partitions): it listens on
the network's gateway address, which every container reaches and nothing else routes around. The timeline
is Engine API calls: start (join, restart), kill (crash: SIGKILL; leave: SIGTERM, then SIGKILL past the
grace), pause and unpause (the cgroup freezer). The engine must run on this machine: the simulator reads
each node's process (CPU, memory) through /proc and binds the relay to the network's gateway.

``RUN/compose.yaml`` is the same population for ``docker compose`` (every device at once, no timeline):
readable, and reusable by hand.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import time
from pathlib import Path


from crossback.config.scenario import Profile

from .backend import STOP_GRACE, Backend, wait_for_end
from .netns import METRICS_PORT, NODE_PORT
from .plan import Plan
from .relay import Relay

LABEL = "crossback.sim"  # every container and network of a run carries LABEL=<run tag>
PID_LABEL = "crossback.sim.pid"  # the simulator's process id: a dead one's leftovers are removed
REFRESH = 0.25  # seconds between looks at every container's state (one Engine API call)
DEFAULT_IMAGE = "crossback:latest"


def engine(backend: str = "compose"):
    """A client of the Docker engine at DOCKER_HOST (or the default socket), or a clear error naming the
    ``backend`` that needs it."""
    try:
        import docker
    except ImportError:
        raise RuntimeError(f"the {backend} backend needs the docker SDK for Python: pip install 'crossback[docker]'") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # the SDK raises several kinds; all mean the same to a user
        raise RuntimeError(f"--backend {backend}: no Docker engine answers at "
                           f"{os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}: {exc}") from None
    return client


def forget_dead_runs(client) -> list[str]:
    """Remove the containers and networks of runs whose simulator died without cleaning up."""
    gone = []
    for c in client.containers.list(all=True, sparse=True, filters={"label": PID_LABEL}):
        pid = c.attrs.get("Labels", {}).get(PID_LABEL, "")
        if pid.isdigit() and not os.path.exists(f"/proc/{int(pid)}"):
            c.remove(force=True)
            gone.append(c.id[:12])
    for n in client.networks.list(filters={"label": PID_LABEL}):
        pid = n.attrs.get("Labels", {}).get(PID_LABEL, "")
        if pid.isdigit() and not os.path.exists(f"/proc/{int(pid)}"):
            n.remove()
            gone.append(n.name)
    return gone


class BridgeNetwork:
    """The run's own Docker bridge network: a /24 whose gateway (this machine's side) hosts the relay."""

    def __init__(self, client, run_id: int):
        from docker.types import IPAMConfig, IPAMPool

        forget_dead_runs(client)
        self.tag = f"cbsim{run_id % 100000:05d}"
        taken = {c["Subnet"] for n in client.networks.list() for c in (n.attrs.get("IPAM") or {}).get("Config") or []
                 if "Subnet" in c}
        for i in range(256):
            subnet = ipaddress.ip_network(f"10.{200 + (run_id + i) % 50}.{(run_id // 50 + i) % 256}.0/24")
            if str(subnet) not in taken:
                break
        self.subnet = subnet
        self.gateway = str(subnet.network_address + 1)
        self._next = 2
        self.network = client.networks.create(
            self.tag, driver="bridge", labels={LABEL: self.tag, PID_LABEL: str(os.getpid())},
            ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=self.gateway)]),
            options={"com.docker.network.bridge.name": self.tag})

    def address(self) -> str:
        """A new device address on the network."""
        host = self.subnet.network_address + self._next
        if host >= self.subnet.broadcast_address:
            raise RuntimeError(f"the run's network {self.subnet} holds at most 253 devices")
        self._next += 1
        return str(host)

    def remove(self) -> None:
        try:
            self.network.remove()
        except Exception:  # already gone, or a container still attached after a failed remove
            pass


class ContainerProcess:
    """A device's container with the part of ``subprocess.Popen``'s interface the backend uses; ``pid`` is
    its node's process id on this machine (the container's main process), read when it starts."""

    def __init__(self, backend: ComposeBackend, container):
        self.backend, self.container = backend, container
        container.start()
        container.reload()
        self.pid = int(container.attrs["State"]["Pid"])
        self.returncode: int | None = None
        self.started = container.attrs["State"]["StartedAt"]

    def poll(self) -> int | None:
        if self.returncode is None:
            state = self.backend.state(self.container.id)
            if state is not None and state[0] in ("exited", "dead"):
                code = state[1]
                self.returncode = -(code - 128) if code > 128 else code  # as Popen's: -N for signal N
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return wait_for_end(self, timeout, lambda: time.sleep(REFRESH), f"container {self.container.name}")

    def send_signal(self, sig: int) -> None:
        from docker.errors import APIError

        if self.poll() is None:
            try:
                self.container.kill(signal=int(sig))
            except APIError as exc:  # it ended in between: nothing to signal
                if exc.status_code not in (404, 409):
                    raise

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ComposeBackend(Backend):
    name = "compose"

    def __init__(self, plan: Plan, out: Path, relay: Relay, network: BridgeNetwork, client, image: str = DEFAULT_IMAGE):
        """Every device's container is created here (on a copying storage driver, seconds each); the run's
        clock (``origin``) starts once they all exist, and the node configs that count from it are written."""
        super().__init__(plan, out, time.time(), relay)
        self.client, self.network, self.image = client, network, image
        self.addresses = {d: network.address() for d in self.devices}
        self.containers = {}
        self._states: dict[str, tuple[str, int]] = {}
        self._refreshed = 0.0
        for device in self.devices:
            self.relay.set_target(device, self.addresses[device], NODE_PORT)  # fixed: the container's address
        services = {d: self.service(d) for d in self.devices}
        self.create_devices(self.out / "compose.yaml", self.compose_file(services), services, self._create,
                            self.containers)

    def listen(self, device: str) -> str:
        return f"{self.addresses[device]}:{NODE_PORT}"

    def metrics_address(self, device: str) -> str:
        return f"{self.addresses[device]}:{METRICS_PORT}"

    # ------------------------------------------------------------ the population as a compose file

    def service(self, device: str) -> dict:
        """The device's container as a compose service (what ``_create`` gives the Engine API)."""
        dev = self.devices[device]
        return compose_service(device, dev.plan.profile, self.node_args(device), dev.faces.proxy,
                               self.addresses[device], self.network.tag, self.image, self.out)

    def compose_file(self, services: dict) -> dict:
        return compose_file(self.network.tag, services)

    def _create(self, device: str, service: dict):
        net = self.network.tag
        extra = {}
        if "cpus" in service:
            extra["nano_cpus"] = int(service["cpus"] * 1e9)
        if "mem_limit" in service:
            extra["mem_limit"] = extra["memswap_limit"] = service["mem_limit"]
        return self.client.containers.create(
            service["image"], command=service["command"], name=service["container_name"],
            environment=service["environment"], labels=service["labels"],
            volumes={m.split(":")[0]: {"bind": m.split(":")[1], "mode": "rw"} for m in service["volumes"]},
            network=net, networking_config={net: self.client.api.create_endpoint_config(
                ipv4_address=service["networks"][net]["ipv4_address"])},
            stop_signal="SIGTERM", **extra)

    # ------------------------------------------------------------ what the engine says

    def state(self, container_id: str) -> tuple[str, int] | None:
        """(state, exit code) of a run's container, from one listing of them all at most every REFRESH s."""
        if time.monotonic() - self._refreshed >= REFRESH:
            listed = self.client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL}={self.network.tag}"})
            self._states = {c.id: (c.attrs["State"], _exit_code(c.attrs.get("Status", ""))) for c in listed}
            self._refreshed = time.monotonic()
        return self._states.get(container_id)

    def ended_state(self, device: str) -> str:
        container = self.containers[device]
        container.reload()
        return "oom_killed" if container.attrs["State"].get("OOMKilled") else "exited"

    def mechanisms(self) -> dict:
        return {"backend": self.name, "network": f"a Docker bridge network ({self.network.subnet})",
                "rate": "relay (userspace, per device and direction, shared by its connections)",
                "latency": "relay", "jitter": "relay (uniform, order kept)",
                "loss": "relay (a chunk that would lose a packet arrives one RTO late)",
                "partition": "relay (blackhole: no answer across until the heal)",
                "cpus": "container CPU quota (NanoCpus)", "memory": "container memory limit, no swap",
                "threads": "node.threads and OMP_NUM_THREADS", "start": f"a container of {self.image}",
                "pause": "docker pause (cgroup freezer)", "cpu_demand": self.cpu_demand(), "not_applied": {}}

    # ------------------------------------------------------------ actions

    def start(self, device: str) -> str:
        note = self.begin_start(device)
        if note is None:
            return "already running"
        dev = self.devices[device]
        dev.proc = ContainerProcess(self, self.containers[device])
        self._refreshed = 0.0  # the next look sees it running
        return self.started(device, note)

    def pause(self, device: str) -> str:
        dev = self.devices[device]
        if not dev.running:
            return f"not running ({dev.state})"
        self.containers[device].pause()
        dev.state = "paused"
        return "ok"

    def thaw(self, device: str) -> None:
        unpause(self.containers[device])

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.network.remove()

    def remove_devices(self) -> None:
        for container in self.containers.values():
            try:
                container.remove(force=True)
            except Exception:  # already gone
                pass


def unpause(container) -> None:
    """``docker unpause``, where the container is not paused already."""
    from docker.errors import APIError

    try:
        container.unpause()
    except APIError as exc:  # not paused after all
        if exc.status_code != 409:
            raise


def compose_service(device: str, profile: Profile, args: list[str], proxy: str, address: str, network: str,
                    image: str, out: Path) -> dict:
    """One device's container as a compose service: crossback's image running its node (``args``), calling
    out through the relay's ``proxy`` face, at ``address`` on ``network``, the run folder ``out`` mounted
    at its own path, and the profile's limits."""
    threads = str(profile.threads)
    folder = str(Path(out).resolve())
    service = {"image": image, "container_name": f"{network}-{device}", "command": list(args),
               "environment": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                               "grpc_proxy": f"http://{proxy}", "PYTHONUNBUFFERED": "1"},
               "volumes": [f"{folder}:{folder}"], "networks": {network: {"ipv4_address": address}},
               "labels": {LABEL: network, PID_LABEL: str(os.getpid()), "crossback.device": device},
               "stop_grace_period": f"{STOP_GRACE:g}s"}
    if profile.cpus is not None:
        service["cpus"] = profile.cpus
    if profile.memory_mib is not None:
        service["mem_limit"] = f"{profile.memory_mib}m"
        service["memswap_limit"] = f"{profile.memory_mib}m"  # no swap: over the limit, the kernel kills
    return service


def compose_file(network: str, services: dict) -> dict:
    """The population as a compose project on the run's (already created) network."""
    return {"name": network, "services": services, "networks": {network: {"name": network, "external": True}}}


def _exit_code(status: str) -> int:
    """The exit code in a container listing's status ("Exited (137) 2 seconds ago"); 0 when there is none."""
    if status.startswith("Exited (") and ")" in status:
        code = status[len("Exited ("):status.index(")")]
        return int(code) if code.lstrip("-").isdigit() else 0
    return 0
