"""Device processes forked from one preloaded parent (a zygote), so they share torch and the project.

A fresh interpreter per device maps torch's libraries and re-imports every module on its own: 160 MiB of
proportional set size (PSS) per idle node, and two CPU seconds of imports per start on a loaded machine
(``benchmarks/perf/node_memory.py``). A zygote imports what a node imports once, runs no torch op and
starts no thread, and forks each device from there: the pages of the libraries and of the imported code
stay shared copy-on-write between every device.

The zygote is its own small process, not the simulator: a fork copies only the forking thread, and the
simulator runs relay threads whose locks a child could inherit held. The simulator talks to it over a
pipe in JSON lines (``Zygote``); each forked device is a ``ForkedProcess``, which the local backend
uses as it would use a ``subprocess.Popen``. In the child, before the node's code runs, everything
``subprocess.Popen`` + ``ip netns exec`` did for a spawned device is done by hand: a new session, the
device's cgroup, the OOM killer's first pick, death with the zygote (which dies with the simulator), its
network namespace (setns), its environment, stdout to /dev/null and stderr to its console file.

    python -m crossback.sim.zygote PARENT_PID      (what ``Zygote.start`` runs; not a user command)
"""
from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .backend import wait_for_end

# the module `python -m` runs for a spawned node; named, not imported here (the CLI sits above the simulator)
NODE_MODULE = "crossback.app.cli"
PRELOAD = ("crossback.node.process", NODE_MODULE)  # everything `crossback node` imports
REPLY_SECONDS = 30.0  # a fork takes milliseconds; a zygote silent this long is stuck
REAP_EVERY = 0.05  # seconds between the zygote's looks for ended children
CLONE_NEWNET = 0x40000000


class ZygoteError(RuntimeError):
    pass


# ------------------------------------------------------------------ the simulator's side

class ForkedProcess:
    """A device forked by the zygote, with the part of ``subprocess.Popen``'s interface the backend uses.
    Signals go through the zygote, which reaps its children itself: it never signals a pid it has reaped
    (so never a stranger that reused the number)."""

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.pump()
            self.returncode = self.zygote.exits.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return wait_for_end(self, timeout, lambda: self.zygote.pump(REAP_EVERY), f"device process {self.pid}")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self.zygote.signal(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The simulator's handle on a zygote process: ``fork`` a device, ``signal`` one, learn which ended."""

    def __init__(self, proc: subprocess.Popen, console: Path):
        self.proc, self.console = proc, console
        self.exits: dict[int, int] = {}  # pid -> its return code (as Popen's: -N for signal N)
        # the memory its imports wrote: shared copy-on-write by every device, charged to the zygote's cgroup
        self.shared_mib = 0
        self._buffer = b""
        self._replies: list[dict] = []
        self._next = 0

    @classmethod
    def start(cls, console: Path, env: dict[str, str] | None = None) -> Zygote:
        """Start a zygote that dies with this process; its own stderr goes to ``console``; ``env``: its
        environment (OMP_NUM_THREADS among it: set before torch is imported). Waits until it has preloaded."""
        from crossback.node.launch import die_with_parent

        parent = os.getpid()
        with open(console, "a", encoding="utf-8") as err:
            proc = subprocess.Popen([sys.executable, "-m", "crossback.sim.zygote", str(parent)], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0,
                                    start_new_session=True, preexec_fn=lambda: die_with_parent(parent, signal.SIGKILL))
        zygote = cls(proc, console)
        try:
            ready = zygote._request({"op": "ready"}, timeout=120.0)  # imports: seconds, minutes when loaded
            zygote.shared_mib = int(ready["anonymous_kib"]) >> 10
            if ready["threads"] != 1:
                raise ZygoteError(f"the zygote runs {ready['threads']} threads after its imports: forking "
                                  "it could copy a lock another thread holds")
        except BaseException:
            zygote.close()
            raise
        return zygote

    def fork(self, argv: list[str], env: dict[str, str], stderr: Path, cgroups: list[str] = (),
             netns: str | None = None, victim: bool = True) -> ForkedProcess:
        """A device running ``crossback <argv>`` with ``env``, joined to the cgroup folders ``cgroups`` and
        the network namespace file ``netns`` (e.g. /run/netns/NAME); ``victim``: the OOM killer's first pick."""
        reply = self._request({"op": "fork", "argv": list(argv), "env": env, "stderr": str(stderr),
                               "cgroups": [str(c) for c in cgroups], "netns": netns, "victim": victim})
        return ForkedProcess(self, int(reply["pid"]))

    def signal(self, pid: int, sig: int) -> bool:
        """Send ``sig`` to the zygote's child ``pid``; False when it has already ended."""
        return bool(self._request({"op": "signal", "pid": pid, "sig": int(sig)})["sent"])

    def pump(self, wait: float = 0.0) -> None:
        """Read what the zygote has said (ended children among it), waiting up to ``wait`` seconds for it."""
        if self.proc.stdout is None or self.proc.stdout.closed:
            return
        ready = select.select([self.proc.stdout], [], [], wait)[0]
        while ready:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self.proc.stdout.close()
                break
            self._buffer += chunk
            ready = select.select([self.proc.stdout], [], [], 0)[0]
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "exited" in message:
                self.exits[int(message["exited"])] = int(message["code"])
            else:
                self._replies.append(message)

    def _request(self, message: dict, timeout: float = REPLY_SECONDS) -> dict:
        self._next += 1
        number = self._next
        try:
            self.proc.stdin.write((json.dumps({"id": number, **message}) + "\n").encode())
        except (BrokenPipeError, ValueError):
            raise ZygoteError(self._gone()) from None
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._replies:
                if reply.get("id") == number:
                    self._replies.remove(reply)
                    if "error" in reply:
                        raise ZygoteError(f"the zygote could not {message['op']}: {reply['error']}")
                    return reply
            if self.proc.stdout.closed or self.proc.poll() is not None:
                raise ZygoteError(self._gone())
            if time.monotonic() >= deadline:
                raise ZygoteError(f"the zygote did not answer {message['op']} within {timeout:g} s (see {self.console})")
            self.pump(0.1)

    def _gone(self) -> str:
        code = self.proc.poll()
        tail = self.console.read_text(encoding="utf-8", errors="replace")[-2000:] if self.console.exists() else ""
        return f"the zygote process ended (exit code {code}); its stderr ({self.console}) ends:\n{tail}"

    def close(self) -> None:
        """Stop the zygote; its children die with it (they are the simulator's to stop first)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def pss_bytes(self) -> int | None:
        from .resources import usage

        u = usage(self.proc.pid)
        return u.pss_bytes if u is not None else None


# ------------------------------------------------------------------ the zygote's side

def _setns(path: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _become_device(request: dict, zygote: int) -> int:
    """In the forked child: set the device up as a spawned one would be, run the node; its exit code."""
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDWR)
    for fd, target in ((null, 0), (null, 1), (err, 2)):  # first, so a failed setup is in the device's console
        os.dup2(fd, target)
    os.close(null)
    os.close(err)
    try:
        from crossback.node.launch import die_with_parent

        os.setpriority(os.PRIO_PROCESS, 0, 0)  # a device runs at the normal priority, not the zygote's
        os.setsid()
        for folder in request["cgroups"]:
            Path(folder, "cgroup.procs").write_text(str(os.getpid()))
        if request["victim"]:
            Path("/proc/self/oom_score_adj").write_text("1000")  # raising it needs no privilege
        die_with_parent(zygote, signal.SIGKILL)
        if request["netns"]:
            _setns(request["netns"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        sys.argv = ["crossback", *request["argv"]]
        runpy.run_module(NODE_MODULE, run_name="__main__")  # as `python -m`: it ends in SystemExit
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # what an uncaught exception would print, where a spawned node's would go
        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()


def _anonymous_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    return 0


def _code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve(parent: int) -> int:
    """The zygote's loop: requests on stdin, replies and ended children on stdout, one JSON line each."""
    from crossback.node.launch import die_with_parent

    die_with_parent(parent, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the simulator decides when its devices stop
    for module in PRELOAD:
        __import__(module)
    from .relay import raise_priority

    raise_priority()  # it starts devices on the timeline's schedule: it must not queue behind them
    live: set[int] = set()
    buffer = b""

    def say(message: dict) -> None:
        os.write(1, (json.dumps(message) + "\n").encode())

    while True:
        while live:  # ended children: reaped here, so no pid is signalled after it could be reused
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in live:
                live.discard(pid)
                say({"exited": pid, "code": _code(status)})
        if not select.select([0], [], [], REAP_EVERY)[0]:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the simulator closed the pipe: it is gone or done
            return 0
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            request = json.loads(line)
            reply = {"id": request["id"]}
            try:
                if request["op"] == "fork":
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        code = 1
                        try:
                            code = _become_device(request, os.getppid())
                        finally:
                            os._exit(code & 0xFF)
                    live.add(pid)
                    reply["pid"] = pid
                elif request["op"] == "signal":
                    sent = request["pid"] in live
                    if sent:
                        os.kill(request["pid"], request["sig"])
                    reply["sent"] = sent
                elif request["op"] == "ready":  # a fork copies one thread: a second would be a hazard
                    reply["threads"] = len(os.listdir("/proc/self/task"))
                    reply["anonymous_kib"] = _anonymous_kib()
                else:
                    reply["error"] = f"unknown op {request['op']!r}"
            except OSError as exc:
                reply["error"] = str(exc)
            say(reply)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
