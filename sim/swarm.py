"""The swarm backend: every device a one-replica service of crossback's image on a Docker Swarm, placed by the
Swarm's scheduler under constraints on its nodes (``--place GROUP=CONSTRAINT``), and the population written
out as a stack file.

The timeline is Engine API calls. The manager creates every service at no replicas; a join scales one to
a replica, a restart forces a new task (the services never restart on their own: their restart policy is
``none``). Crash, leave and pause act on the container of the service's running task through the engine
that runs it, named by its Swarm node's ``crossback.engine`` label (the manager's own node needs none):
SIGKILL, SIGTERM then SIGKILL past the grace, the cgroup freezer. A start returns once the manager has the
order; the task is found on later looks, so a crowd that joins at once is not started one by one.

Links go through the relay as on the other backends. Every node publishes its port in host mode on the
Swarm node that runs it, and the relay, on this machine's address towards the Swarm, forwards a device's
traffic to (that node's address, the published port). The services share the run's own attachable
overlay network, which carries nothing of the simulation; it is where a user's own tools can reach them.
The run folder is mounted at its own path on every node: it must be the same folder everywhere (one
machine, or a shared file system). CPU and memory are read through /proc where the node's process is on
this machine.

``RUN/stack.yaml`` is the population for ``docker stack deploy`` (every device at once, no timeline; the
backend itself creates the services at no replicas).
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import time
from pathlib import Path

import yaml

from crossback.config.errors import ConfigError
from crossback.config.scenario import Profile
from crossback.node.metrics_http import scrape_config

from .backend import STOP_GRACE, Backend, wait_for_end
from .compose import LABEL, PID_LABEL, REFRESH, compose_service, unpause
from .netns import METRICS_PORT, NODE_PORT
from .plan import Plan
from .relay import Relay

ENGINE_LABEL = "crossback.engine"  # a Swarm node's label: its engine's API (unix:///..., tcp://host:2375)
START_TIMEOUT = 180.0  # seconds a task may take to run before its device counts as not started
PORT_BASE, PORT_BLOCK = 30000, 512  # each run publishes node and metrics ports from a free block
ENDED = ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")


def parse_placement(items: list[str] | None, groups: list[str]) -> dict[str, list[str]]:
    """``--place GROUP=CONSTRAINT`` options as {group: [constraint, ...]}; a clear error for a group the
    scenario lacks or a constraint the Swarm would not read."""
    placement: dict[str, list[str]] = {}
    for item in items or []:
        group, sep, constraint = item.partition("=")
        group, constraint = group.strip(), constraint.strip()
        if not sep or not group or not constraint:
            raise ConfigError(f"--place {item!r}: expected GROUP=CONSTRAINT, e.g. cams=node.labels.class==jetson")
        if group not in groups:
            raise ConfigError(f"--place {item!r}: the scenario has no device group {group!r} (it has {groups})")
        if "==" not in constraint and "!=" not in constraint:
            raise ConfigError(f"--place {item!r}: a constraint compares with == or !=, "
                              "e.g. node.labels.class==jetson or node.platform.arch==aarch64")
        placement.setdefault(group, []).append(constraint)
    return placement


class Swarm:
    """The Swarm as the simulator sees it: the manager's client, and on demand a client of each node's engine."""

    def __init__(self, manager):
        info = manager.info().get("Swarm") or {}
        if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
            raise ConfigError("--backend swarm: the engine at DOCKER_HOST is not a Swarm manager "
                              "(docker swarm init, or docker/two-engine-swarm.sh up)")
        self.manager, self.manager_node = manager, info["NodeID"]
        self.manager_addr = info.get("NodeAddr") or "127.0.0.1"
        self._engines = {self.manager_node: manager}
        self.refresh_nodes()
        unreachable = [f"{self.hostname(n)} ({n[:12]})" for n, a in self.nodes.items()
                       if n != self.manager_node and (a.get("Spec") or {}).get("Availability") == "active"
                       and not ((a.get("Spec") or {}).get("Labels") or {}).get(ENGINE_LABEL)]
        if unreachable:
            raise ConfigError(f"--backend swarm: Swarm nodes {', '.join(unreachable)} have no {ENGINE_LABEL} label "
                              "naming their engine's API, so the containers they run could not be killed or paused: "
                              f"docker node update --label-add {ENGINE_LABEL}=tcp://ADDRESS:2375 NODE (or drain them)")

    def refresh_nodes(self) -> None:
        self.nodes = {n.id: n.attrs for n in self.manager.nodes.list()}

    def hostname(self, node_id: str) -> str:
        return ((self.nodes.get(node_id) or {}).get("Description") or {}).get("Hostname", node_id[:12])

    def address(self, node_id: str) -> str:
        """The node's address, where its host-mode published ports are."""
        if node_id not in self.nodes:
            self.refresh_nodes()
        addr = ((self.nodes.get(node_id) or {}).get("Status") or {}).get("Addr", "")
        return self.manager_addr if addr in ("", "0.0.0.0") else addr  # a manager may report no address of its own

    def engine(self, node_id: str):
        """A client of the engine that runs ``node_id``'s tasks."""
        if node_id not in self._engines:
            import docker

            if node_id not in self.nodes:
                self.refresh_nodes()
            url = (((self.nodes.get(node_id) or {}).get("Spec") or {}).get("Labels") or {}).get(ENGINE_LABEL)
            if not url:
                raise RuntimeError(f"Swarm node {self.hostname(node_id)} ({node_id[:12]}) has no {ENGINE_LABEL} "
                                   f"label naming its engine's API, so its containers cannot be killed or paused: "
                                   f"docker node update --label-add {ENGINE_LABEL}=tcp://ADDRESS:2375 {node_id[:12]}")
            self._engines[node_id] = docker.DockerClient(base_url=url, timeout=120)
        return self._engines[node_id]

    def engines(self) -> dict[str, object]:
        """A client of every node's engine that can be reached (the manager's always)."""
        for node_id in self.nodes:
            try:
                self.engine(node_id)
            except RuntimeError:
                pass
        return dict(self._engines)

    def relay_host(self) -> str:
        """This machine's address towards the Swarm: where every node reaches the relay."""
        if ipaddress.ip_address(self.manager_addr).is_loopback:
            return self.manager_addr
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((self.manager_addr, 2377))  # no packet is sent: the kernel picks the route's source
            return s.getsockname()[0]

    def image_id(self, image: str) -> str:
        """The image's ID, present on every engine that can be reached; the services name it by ID, so no
        engine tries a registry first."""
        from docker.errors import ImageNotFound

        try:
            image_id = self.manager.images.get(image).id
        except ImageNotFound:
            raise ConfigError(f"--image: the manager's engine has no image {image!r} (build it there, "
                              "or docker save | docker load it)") from None
        for node_id, client in self.engines().items():
            try:
                client.images.get(image_id)
            except ImageNotFound:
                raise ConfigError(f"--image: the engine of Swarm node {self.hostname(node_id)} has no image {image!r} "
                                  f"({image_id[:19]}); copy it: docker save {image} | docker load "
                                  "(docker/two-engine-swarm.sh up IMAGE does)") from None
        return image_id

    def forget_dead_runs(self) -> list[str]:
        """Remove the services and networks of runs whose simulator died without cleaning up."""
        gone = []
        for kind in (self.manager.services.list(filters={"label": PID_LABEL}),
                     self.manager.networks.list(filters={"label": PID_LABEL})):
            for item in kind:
                labels = (item.attrs.get("Spec") or {}).get("Labels") or item.attrs.get("Labels") or {}
                pid = labels.get(PID_LABEL, "")
                if pid.isdigit() and not os.path.exists(f"/proc/{int(pid)}"):
                    item.remove()
                    gone.append(item.name)
        return gone

    def free_ports(self, n: int) -> int:
        """The first port of a block of ``n`` that no service of the Swarm publishes."""
        used = {p.get("PublishedPort") for s in self.manager.services.list()
                for p in ((s.attrs.get("Endpoint") or {}).get("Ports") or (s.attrs.get("Spec", {}).get("EndpointSpec")
                                                                            or {}).get("Ports") or [])}
        for base in range(PORT_BASE, 65535 - n, PORT_BLOCK):
            if not used & set(range(base, base + n)):
                return base
        raise RuntimeError("no free block of published ports on the Swarm")


class SwarmTask:
    """A device's service with the part of ``subprocess.Popen``'s interface the backend uses. The task the
    order created is found on later looks; ``pid`` is 0 until its container runs, then its node's process
    id on this machine."""

    def __init__(self, backend: SwarmBackend, device: str, before: set[str]):
        self.backend, self.device, self.before = backend, device, before
        self.ordered = time.monotonic()
        self.pid = 0
        self.returncode: int | None = None
        self.container = None
        self.node = ""

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        task = self.backend.task(self.device, self.before) or {}
        status = task.get("Status") or {}
        state = status.get("State", "")
        if self.container is None and state == "running":
            self._running(task)
        elif state in ENDED:
            err = status.get("Err") or ""
            if self.container is None and (state not in ("complete", "failed") or (err and "non-zero exit" not in err)):
                self._not_started(f"{state}: {err or status.get('Message', '')}")  # e.g. it could not be created
            else:  # it ran, however briefly
                code = int((status.get("ContainerStatus") or {}).get("ExitCode", 0) or 0)
                self.returncode = -(code - 128) if code > 128 else code  # as Popen's: -N for signal N
        elif self.container is None and time.monotonic() - self.ordered > START_TIMEOUT:
            self._not_started(f"still {state or 'without a task'} after {START_TIMEOUT:g} s: "
                              f"{status.get('Err') or status.get('Message', '')}")
        return self.returncode

    def _running(self, task: dict) -> None:
        container_id = task["Status"]["ContainerStatus"]["ContainerID"]
        self.node = task["NodeID"]
        self.container = self.backend.swarm.engine(self.node).containers.get(container_id)
        self.pid = int(self.container.attrs["State"]["Pid"])
        self.backend.placed(self.device, self)

    def _not_started(self, why: str) -> None:
        self.returncode = -1
        self.backend.not_started(self.device, why)

    def running_container(self):
        """The container once its task runs (waiting up to START_TIMEOUT for it), or None if it never ran."""
        deadline = self.ordered + START_TIMEOUT + 1
        while self.container is None and self.poll() is None and time.monotonic() < deadline:
            self.backend.refresh_soon()
            time.sleep(REFRESH)
        return self.container

    def wait(self, timeout: float | None = None) -> int:
        return wait_for_end(self, timeout, lambda: time.sleep(REFRESH), f"service {self.backend.service_name(self.device)}")

    def send_signal(self, sig: int) -> None:
        from docker.errors import APIError

        container = self.running_container()
        if container is not None and self.poll() is None:
            try:
                container.kill(signal=int(sig))
            except APIError as exc:  # it ended in between: nothing to signal
                if exc.status_code not in (404, 409):
                    raise
            self.backend.refresh_soon()

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class SwarmBackend(Backend):
    name = "swarm"

    def __init__(self, plan: Plan, out: Path, relay: Relay, swarm: Swarm, image: str,
                 placement: dict[str, list[str]] | None = None):
        """Every device's service is created here, at no replicas; the run's clock (``origin``) starts once
        they all exist."""
        super().__init__(plan, out, time.time(), relay)
        self.swarm, self.image = swarm, image
        self.image_id = swarm.image_id(image)
        self.placement = placement or {}
        self.tag = f"cbsw{os.getpid() % 100000:05d}"
        swarm.forget_dead_runs()
        base = swarm.free_ports(2 * len(self.devices))
        self.ports = {d: (base + 2 * i, base + 2 * i + 1) for i, d in enumerate(self.devices)}
        self.metrics: dict[str, str] = {}
        self.where: dict[str, list[str]] = {d: [] for d in self.devices}  # device -> the Swarm node of each start
        self.services: dict[str, object] = {}
        self._tasks: dict[str, list[dict]] = {}
        self._refreshed = 0.0
        labels = {LABEL: self.tag, PID_LABEL: str(os.getpid())}
        self.network = swarm.manager.networks.create(self.tag, driver="overlay", attachable=True, labels=labels)
        specs = {d: self.service(d) for d in self.devices}
        self.create_devices(self.out / "stack.yaml", self.stack_file(specs), specs, self._create, self.services)

    def listen(self, device: str) -> str:
        return f"0.0.0.0:{NODE_PORT}"

    def metrics_address(self, device: str) -> str:  # where it is scraped once placed; the node listens on all
        return self.metrics.get(device, f"{self.swarm.manager_addr}:{self.ports[device][1]}")

    def node_config(self, dev) -> dict:
        cfg = super().node_config(dev)
        cfg["node"]["metrics"] = {**cfg["node"].get("metrics", {}), "listen": f"0.0.0.0:{METRICS_PORT}"}
        return cfg

    # ------------------------------------------------------------ the population as a stack

    def service_name(self, device: str) -> str:
        return f"{self.tag}-{device}"

    def service(self, device: str) -> dict:
        """The device's service as a stack service (what ``_create`` gives the Engine API)."""
        dev = self.devices[device]
        return stack_service(device, dev.plan.profile, self.node_args(device), dev.faces.proxy, self.tag, self.image,
                             self.out, self.ports[device], self.placement.get(dev.plan.group, []))

    def stack_file(self, services: dict) -> dict:
        return stack_file(self.tag, services)

    def _create(self, device: str, spec: dict):
        from docker.types import EndpointSpec, Mount, Resources, RestartPolicy, ServiceMode

        profile = self.devices[device].plan.profile
        resources = Resources(cpu_limit=int(profile.cpus * 1e9) if profile.cpus is not None else None,
                              mem_limit=profile.memory_mib * 2**20 if profile.memory_mib is not None else None)
        ports = {p["published"]: (p["target"], "tcp", "host") for p in spec["ports"]}
        folder = spec["volumes"][0].split(":")[0]
        return self.swarm.manager.services.create(
            self.image_id, args=spec["command"], name=self.service_name(device), env=spec["environment"],
            labels=spec["labels"], container_labels=spec["labels"], mode=ServiceMode("replicated", replicas=0),
            restart_policy=RestartPolicy(condition="none"), endpoint_spec=EndpointSpec(mode="dnsrr", ports=ports),
            resources=resources, mounts=[Mount(folder, folder, type="bind")], networks=[self.network.id],
            constraints=spec["deploy"]["placement"]["constraints"], stop_signal="SIGTERM",
            stop_grace_period=int(STOP_GRACE * 1e9))

    # ------------------------------------------------------------ what the Swarm says

    def refresh_soon(self) -> None:
        self._refreshed = 0.0

    def task(self, device: str, before: set[str]) -> dict | None:
        """The newest task of the device's service that is not one of ``before``, from one listing of the
        run's tasks at most every REFRESH s."""
        if time.monotonic() - self._refreshed >= REFRESH:
            ids = {s.id: d for d, s in self.services.items()}
            tasks: dict[str, list[dict]] = {}
            for t in self.swarm.manager.api.tasks():
                if t.get("ServiceID") in ids:
                    tasks.setdefault(ids[t["ServiceID"]], []).append(t)
            self._tasks, self._refreshed = tasks, time.monotonic()
        fresh = [t for t in self._tasks.get(device, []) if t["ID"] not in before]
        return max(fresh, key=lambda t: t.get("CreatedAt", "")) if fresh else None

    def placed(self, device: str, handle: SwarmTask) -> None:
        """The device's task runs: its node's address becomes the relay's target, and where it ran is kept."""
        dev = self.devices[device]
        addr = self.swarm.address(handle.node)
        node_port, metrics_port = self.ports[device]
        self.relay.set_target(device, addr, node_port)
        self.metrics[device] = f"{addr}:{metrics_port}"
        dev.pids.append(handle.pid)
        self.where[device].append(self.swarm.hostname(handle.node))
        scrape = scrape_config(self.metrics)
        (self.out / "prometheus.yml").write_text(yaml.safe_dump(scrape, sort_keys=False), encoding="utf-8")

    def not_started(self, device: str, why: str) -> None:
        with open(self.out / "logs" / f"{device}.console", "a", encoding="utf-8") as f:
            f.write(f"swarm: the task of service {self.service_name(device)} did not run: {why}\n")

    def ended_state(self, device: str) -> str:
        container = self.devices[device].proc.container
        if container is None:
            return "not_started"
        try:
            container.reload()
        except Exception:  # removed already: the task's exit code is all there is
            return "exited"
        return "oom_killed" if container.attrs["State"].get("OOMKilled") else "exited"

    def mechanisms(self) -> dict:
        nodes = {n: self.swarm.hostname(n) for n in self.swarm.nodes}
        return {"backend": self.name, "network": f"a Swarm of {len(nodes)} nodes ({', '.join(sorted(nodes.values()))}); "
                                                 f"overlay network {self.tag}, host-mode published ports",
                "rate": "relay (userspace, per device and direction, shared by its connections)",
                "latency": "relay", "jitter": "relay (uniform, order kept)",
                "loss": "relay (a chunk that would lose a packet arrives one RTO late)",
                "partition": "relay (blackhole: no answer across until the heal)",
                "cpus": "service CPU limit (NanoCPUs)", "memory": "service memory limit",
                "threads": "node.threads and OMP_NUM_THREADS",
                "start": f"a one-replica service of {self.image} ({self.image_id[7:19]})",
                "pause": "docker pause on the engine that runs the task (cgroup freezer)",
                "placement": {g: c for g, c in self.placement.items()},
                "ran_on": {d: w for d, w in self.where.items() if w},
                "cpu_demand": self.cpu_demand(), "not_applied": {}}

    # ------------------------------------------------------------ actions

    def start(self, device: str) -> str:
        note = self.begin_start(device)
        if note is None:
            return "already running"
        dev = self.devices[device]
        service = self.services[device]
        before = {t["ID"] for t in self.swarm.manager.api.tasks(filters={"service": service.id})}
        service.reload()
        if dev.starts == 0:
            service.scale(1)
        else:
            service.force_update()
        dev.proc = SwarmTask(self, device, before)
        self.refresh_soon()
        dev.state, dev.starts = "running", dev.starts + 1
        return ("started" if dev.starts == 1 else "restarted") + note

    def pause(self, device: str) -> str:
        dev = self.devices[device]
        if not dev.running:
            return f"not running ({dev.state})"
        container = dev.proc.running_container()
        if container is None:
            return "not running (its task did not start)"
        container.pause()
        dev.state = "paused"
        return "ok"

    def thaw(self, device: str) -> None:
        container = self.devices[device].proc.container
        if container is not None:
            unpause(container)

    def remove_devices(self) -> None:
        for service in self.services.values():
            try:
                service.remove()
            except Exception:  # already gone
                pass
        for _ in range(40):  # the network goes once the services' tasks have left it
            try:
                self.network.remove()
                return
            except Exception:
                time.sleep(0.5)


def stack_service(device: str, profile: Profile, args: list[str], proxy: str, network: str, image: str, out: Path,
                  ports: tuple[int, int], constraints: list[str]) -> dict:
    """One device's service in a stack file: crossback's image running its node (``args``), calling out
    through the relay's ``proxy`` face, its node and metrics ports published in host mode at ``ports``,
    on the Swarm nodes that match ``constraints``, with its profile's limits and the run folder ``out``
    mounted at its own path."""
    base = compose_service(device, profile, args, proxy, "", network, image, out)
    limits = {**({"cpus": str(base["cpus"])} if "cpus" in base else {}),
              **({"memory": base["mem_limit"]} if "mem_limit" in base else {})}
    deploy = {"mode": "replicated", "replicas": 1, "endpoint_mode": "dnsrr", "restart_policy": {"condition": "none"},
              "labels": dict(base["labels"]), "placement": {"constraints": list(constraints)},
              **({"resources": {"limits": limits}} if limits else {})}
    return {"image": image, "command": base["command"], "environment": base["environment"],
            "volumes": base["volumes"], "networks": [network], "labels": base["labels"],
            "stop_grace_period": base["stop_grace_period"],
            "ports": [{"target": target, "published": published, "protocol": "tcp", "mode": "host"}
                      for target, published in zip((NODE_PORT, METRICS_PORT), ports)],
            "deploy": deploy}


def stack_file(network: str, services: dict) -> dict:
    """The population as a stack on an overlay network of its own (the run's is gone once it ends)."""
    return {"version": "3.8", "services": services, "networks": {network: {"driver": "overlay", "attachable": True}}}
