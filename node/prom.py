"""Counters, gauges and histograms with fixed label names, and Prometheus' text exposition format
(version 0.0.4) for them: what a node's ``/metrics`` serves.

Why not prometheus_client's registry: rendering is what every scrape pays, and its ``generate_latest``
took 3.7 ms (p50) for a busy node's 250 series on a 2-core machine, over the 1 ms a scrape may cost
(benchmarks/perf/metrics_cost.py). Here each series keeps its rendered name and labels, so a scrape only
formats numbers. The format is checked with prometheus_client's parser and a real Prometheus in the tests.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from bisect import bisect_left
from typing import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Sample = tuple[str, dict, float]  # (sample name, labels, value)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _selector(name: str, labels: dict) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class _Value:
    """One counter or gauge series."""
    __slots__ = ("labels", "_line", "_lock", "value")

    def __init__(self, name: str, labels: dict):
        self.labels, self._line, self._lock, self.value = labels, _selector(name, labels) + " ", threading.Lock(), 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def render(self, out: list[str]) -> None:
        out.append(self._line + _number(self.value))

    def samples(self, name: str) -> Iterable[Sample]:
        yield name, self.labels, self.value


class _Histogram:
    """One histogram series: cumulative buckets, sum and count."""
    __slots__ = ("labels", "_bounds", "_counts", "_sum", "_lock", "_lines")

    def __init__(self, name: str, labels: dict, bounds: tuple[float, ...]):
        self.labels, self._bounds, self._lock = labels, bounds, threading.Lock()
        self._counts, self._sum = [0] * (len(bounds) + 1), 0.0
        self._lines = [_selector(f"{name}_bucket", {**labels, "le": _number(b)}) + " " for b in (*bounds, math.inf)]
        self._lines += [_selector(f"{name}_sum", labels) + " ", _selector(f"{name}_count", labels) + " "]

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect_left(self._bounds, value)] += 1
            self._sum += value

    def _cumulative(self) -> tuple[list[int], float]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        running, out = 0, []
        for c in counts:
            running += c
            out.append(running)
        return out, total

    def render(self, out: list[str]) -> None:
        buckets, total = self._cumulative()
        out.extend(line + repr(float(n)) for line, n in zip(self._lines, buckets))
        out.append(self._lines[-2] + _number(total))
        out.append(self._lines[-1] + repr(float(buckets[-1])))

    def samples(self, name: str) -> Iterable[Sample]:
        buckets, total = self._cumulative()
        for bound, n in zip((*self._bounds, math.inf), buckets):
            yield f"{name}_bucket", {**self.labels, "le": _number(bound)}, float(n)
        yield f"{name}_sum", self.labels, total
        yield f"{name}_count", self.labels, float(buckets[-1])


class Family:
    """A metric: a name, its help, its type and fixed label names; ``labels(*values)`` is one series
    (made on first use). Without label names the family is its own single series."""

    def __init__(self, name: str, help_: str, kind: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] | None = None):
        self.name, self.kind, self.labelnames, self.buckets = name, kind, tuple(labelnames), buckets
        self._head = f"# HELP {name} {_escape(help_)}\n# TYPE {name} {kind}"
        self._series: dict[tuple[str, ...], _Value | _Histogram] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._only = self.labels()

    def labels(self, *values: str):
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, got {values}")
            labels = dict(zip(self.labelnames, values))
            made = _Histogram(self.name, labels, self.buckets) if self.kind == "histogram" else _Value(self.name, labels)
            with self._lock:
                series = self._series.setdefault(values, made)
        return series

    def inc(self, amount: float = 1.0) -> None:
        self._only.inc(amount)

    def set(self, value: float) -> None:
        self._only.set(value)

    def observe(self, value: float) -> None:
        self._only.observe(value)

    def render(self, out: list[str]) -> None:
        out.append(self._head)
        for series in list(self._series.values()):
            series.render(out)

    def samples(self) -> Iterable[Sample]:
        for series in list(self._series.values()):
            yield from series.samples(self.name)


class Registry:
    """One node's metrics. ``collector()`` (added with ``add_collector``) yields families read at scrape time."""

    def __init__(self):
        self._families: list[Family] = []
        self._collectors: list[Callable[[], Iterable[Family]]] = []

    def _add(self, family: Family) -> Family:
        self._families.append(family)
        return family

    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Family:
        return self._add(Family(name, help_, "counter", labels))

    def gauge(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Family:
        return self._add(Family(name, help_, "gauge", labels))

    def histogram(self, name: str, help_: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Family:
        return self._add(Family(name, help_, "histogram", labels, tuple(sorted(buckets))))

    def add_collector(self, collector: Callable[[], Iterable[Family]]) -> None:
        self._collectors.append(collector)

    def _all(self) -> Iterable[Family]:
        yield from self._families
        for collector in self._collectors:
            yield from collector()

    def render(self) -> bytes:
        out: list[str] = []
        for family in self._all():
            family.render(out)
        out.append("")
        return "\n".join(out).encode()

    def samples(self) -> list[Sample]:
        return [s for family in self._all() for s in family.samples()]

    def value(self, name: str, **labels) -> float | None:
        """The value of one sample (as scraped: counters end in _total, histograms have _bucket/_sum/_count)."""
        return next((v for n, ls, v in self.samples() if n == name and ls == labels), None)


def gauge(name: str, help_: str, value: float, labels: dict | None = None) -> Family:
    """A one-off gauge family for a collector (read at scrape time)."""
    family = Family(name, help_, "gauge", tuple(labels or {}))
    family.labels(*(labels or {}).values()).set(value)
    return family


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        return next(float(line.split()[1]) for line in f if line.startswith(b"btime"))


def process_families() -> Iterable[Family]:
    """process_* as every Prometheus exporter names them (Linux /proc; nothing elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        with open("/proc/self/statm", "rb") as f:
            vsize_pages, rss_pages = (int(x) for x in f.read().split()[:2])
        fds = len(os.listdir("/proc/self/fd"))
        boot = _boot_time()
    except (OSError, StopIteration, ValueError):
        return
    yield gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss_pages * _PAGE)
    yield gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize_pages * _PAGE)
    cpu = Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter")
    cpu.inc((int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    yield cpu
    yield gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                boot + int(fields[19]) / _CLOCK_TICKS)
    yield gauge("process_open_fds", "Number of open file descriptors.", fds)
