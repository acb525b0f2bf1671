"""Load signal samplers: GPU (NVML), host CPU (/proc/stat), and how replicas report them.

Framework-free. A replica calls :class:`GpuSampler` / :class:`CpuSampler` each period,
turns the readings and its engine counters into raw signal values with
:func:`replica_signals`, and the controller merges every replica's report into one
sample with :func:`aggregate_reports` before handing it to
:class:`serve_app.load.policy.LoadPolicy`.

A missing driver or GPU is a state of the reading, never an exception.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# NVML return codes meaning "no usable driver here" (stable across NVML versions).
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12


@dataclass(frozen=True)
class GpuStat:
    """One GPU as NVML sees it."""

    index: int
    """NVML device index."""
    uuid: str
    util: float
    """Utilisation (NVML duty cycle) as a fraction 0..1."""
    memory: float
    """Memory used as a fraction 0..1 of the total."""


@dataclass(frozen=True)
class GpuReading:
    """The GPUs this process may use, or why there are none.

    ``state`` is ``"ok"``, ``"no_driver"``, ``"no_gpu"`` or ``"error: <detail>"``;
    ``gpus`` is empty unless the state is ``"ok"``.
    """

    state: str
    gpus: tuple[GpuStat, ...] = ()

    @property
    def ok(self) -> bool:
        """True when at least one GPU was read."""
        return self.state == "ok" and bool(self.gpus)

    @property
    def utilisation(self) -> list[float]:
        """Per-GPU utilisation fractions, in visible order."""
        return [gpu.util for gpu in self.gpus]

    @property
    def memory(self) -> list[float]:
        """Per-GPU memory-used fractions, in visible order."""
        return [gpu.memory for gpu in self.gpus]

    @property
    def max_util(self) -> float | None:
        """The busiest GPU's utilisation; None without GPUs."""
        return max(self.utilisation, default=None)

    @property
    def max_memory(self) -> float | None:
        """The fullest GPU's memory fraction; None without GPUs."""
        return max(self.memory, default=None)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _visible(spec: str | None, devices: Sequence[tuple[int, str]]) -> list[tuple[int, str]] | str:
    """The ``(index, uuid)`` pairs ``CUDA_VISIBLE_DEVICES`` selects, or an error text.

    Follows CUDA: absent means all devices, empty means none, entries are indices or
    (prefixes of) ``GPU-`` UUIDs, and the list ends at the first invalid entry. Integer
    entries are taken as NVML indices, which match CUDA's only with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (what GPU launchers, Ray included, set up).
    """
    if spec is None:
        return list(devices)
    chosen: list[tuple[int, str]] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            break
        match: tuple[int, str] | None = None
        if entry.lstrip("-").isdigit():
            number = int(entry)
            match = next((dev for dev in devices if dev[0] == number), None)
        elif entry.startswith("MIG-"):
            # NVML reports utilisation per physical GPU, not per MIG slice.
            return f"MIG device {entry!r} in CUDA_VISIBLE_DEVICES is not supported"
        else:
            uuid = entry if entry.startswith("GPU-") else f"GPU-{entry}"
            found = [dev for dev in devices if dev[1].startswith(uuid)]
            match = found[0] if len(found) == 1 else None
        if match is None:
            break
        if match not in chosen:
            chosen.append(match)
    return chosen


class GpuSampler:
    """Utilisation and memory of this process's GPUs through NVML.

    NVML is initialised lazily on the first :meth:`sample` and shut down by
    :meth:`close` (a later sample initialises it again). ``nvml`` is the pynvml module
    (imported when None), injectable for tests; ``visible_devices`` overrides
    ``CUDA_VISIBLE_DEVICES`` (read at construction when not given).
    """

    def __init__(self, nvml: Any = None, visible_devices: str | None = None) -> None:
        """Prepare the sampler; nothing is loaded until the first sample."""
        self._nvml = nvml
        self._spec = (
            visible_devices
            if visible_devices is not None
            else os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        self._lock = threading.Lock()
        self._initialised = False
        # A missing driver does not appear while the process runs: remember it.
        self._permanent: GpuReading | None = None
        self._handles: list[tuple[int, str, Any]] | None = None
        self._warned: set[str] = set()

    def sample(self) -> GpuReading:
        """Read the GPUs now. Never raises; problems become the reading's ``state``."""
        with self._lock:
            try:
                return self._sample()
            except Exception as exc:  # a sampler must never take a replica down
                return self._failed(exc)

    def close(self) -> None:
        """Shut NVML down if it was initialised."""
        with self._lock:
            if self._initialised and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:
                    logger.debug("nvmlShutdown failed: %s", exc)
            self._initialised = False
            self._handles = None

    def _sample(self) -> GpuReading:
        if self._permanent is not None:
            return self._permanent
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                return self._remember(GpuReading(f"error: pynvml not importable: {exc}"))
            self._nvml = pynvml
        nvml = self._nvml
        if not self._initialised:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) in (
                    _NVML_ERROR_LIBRARY_NOT_FOUND,
                    _NVML_ERROR_DRIVER_NOT_LOADED,
                ):
                    self._log_once("no_driver", "no NVIDIA driver: GPU signals off (%s)", exc)
                    return self._remember(GpuReading("no_driver"))
                raise
            self._initialised = True
        if self._handles is None:
            resolved = self._resolve(nvml)
            if isinstance(resolved, GpuReading):
                return resolved
            self._handles = resolved
        stats = [self._read(nvml, index, uuid, handle) for index, uuid, handle in self._handles]
        return GpuReading("ok", tuple(stats))

    def _resolve(self, nvml: Any) -> list[tuple[int, str, Any]] | GpuReading:
        count = int(nvml.nvmlDeviceGetCount())
        handles = {index: nvml.nvmlDeviceGetHandleByIndex(index) for index in range(count)}
        devices = [(index, _text(nvml.nvmlDeviceGetUUID(h))) for index, h in handles.items()]
        chosen = _visible(self._spec, devices)
        if isinstance(chosen, str):
            return self._remember(GpuReading(f"error: {chosen}"))
        if not chosen:
            self._log_once(
                "no_gpu", "no visible GPU (%d on host, CUDA_VISIBLE_DEVICES=%r)", count, self._spec
            )
            return self._remember(GpuReading("no_gpu"))
        return [(index, uuid, handles[index]) for index, uuid in chosen]

    @staticmethod
    def _read(nvml: Any, index: int, uuid: str, handle: Any) -> GpuStat:
        util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        memory = info.used / info.total if info.total else 0.0
        return GpuStat(index, uuid, min(max(util, 0.0), 1.0), min(max(memory, 0.0), 1.0))

    def _remember(self, reading: GpuReading) -> GpuReading:
        self._permanent = reading
        return reading

    def _failed(self, exc: Exception) -> GpuReading:
        # Handles may be stale (GPU reset, driver reload): resolve them again next time.
        self._handles = None
        self._log_once(f"error:{type(exc).__name__}", "GPU sampling failed: %s", exc)
        return GpuReading(f"error: {exc}")

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


class CpuSampler:
    """Host CPU utilisation (fraction 0..1) from /proc/stat deltas between calls.

    The first call only primes and returns None: the since-boot average /proc/stat
    would give mixes in hours of idle and says nothing about now. Where /proc/stat
    cannot be read, ``os.getloadavg()[0] / os.cpu_count()`` is returned instead; that
    fallback may exceed 1.0 (more runnable threads than cores), which is real overload.
    """

    def __init__(
        self,
        proc_stat: str | Path = "/proc/stat",
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        cpu_count: Callable[[], int | None] = os.cpu_count,
    ) -> None:
        """``proc_stat``, ``loadavg`` and ``cpu_count`` are injectable for tests."""
        self._path = Path(proc_stat)
        self._loadavg = loadavg
        self._cpu_count = cpu_count
        self._previous: tuple[int, int] | None = None
        self._last: float | None = None

    def sample(self) -> float | None:
        """CPU busy fraction since the previous call; None on the priming call."""
        times = self._read()
        if times is None:
            return self._fallback()
        previous, self._previous = self._previous, times
        if previous is None:
            return None
        total = times[0] - previous[0]
        idle = times[1] - previous[1]
        if total <= 0:
            # Called twice within one clock tick (or counters went backwards).
            return self._last
        self._last = min(max((total - idle) / total, 0.0), 1.0)
        return self._last

    def _read(self) -> tuple[int, int] | None:
        """(total, idle) jiffies of the aggregate ``cpu`` line, or None if unreadable."""
        try:
            with self._path.open(encoding="ascii") as handle:
                first = handle.readline().split()
            if not first or first[0] != "cpu":
                raise ValueError(f"unexpected first line {first[:1]}")
            fields = [int(value) for value in first[1:]]
        except (OSError, ValueError) as exc:
            logger.debug("cannot read %s: %s", self._path, exc)
            return None
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        # already counted in user/nice, so only the first eight fields add up to the total.
        counted = fields[:8]
        idle = sum(fields[3:5])
        return sum(counted), idle

    def _fallback(self) -> float | None:
        try:
            one_minute = self._loadavg()[0]
        except OSError:
            return None
        return one_minute / (self._cpu_count() or 1)


def replica_signals(
    gpu: GpuReading | None,
    cpu: float | None,
    in_flight: int,
    max_ongoing: int,
    waiting: int | None,
    kv_cache_usage: float | None,
) -> dict[str, float]:
    """The raw ``SignalName`` values one VLM replica reports.

    ``gpu_util`` / ``gpu_memory`` (busiest GPU) only when a GPU was read, ``cpu`` and
    ``engine_waiting`` / ``kv_cache`` only when known, ``engine_in_flight`` as the share
    of the replica's ``max_ongoing_requests`` in use.
    """
    signals: dict[str, float] = {}
    if gpu is not None and gpu.ok:
        signals["gpu_util"] = max(gpu.utilisation)
        signals["gpu_memory"] = max(gpu.memory)
    if cpu is not None:
        signals["cpu"] = float(cpu)
    if max_ongoing > 0:
        signals["engine_in_flight"] = in_flight / max_ongoing
    if waiting is not None:
        signals["engine_waiting"] = float(waiting)
    if kv_cache_usage is not None:
        signals["kv_cache"] = float(kv_cache_usage)
    return signals


def aggregate_reports(
    reports: Sequence[Mapping[str, float]], graph_in_flight: int, pool_capacity: int
) -> dict[str, float]:
    """One sample's raw signals from several replicas' reports.

    Each signal is the mean over the replicas that reported it (non-finite values are
    skipped). Mean, not max: Serve's router spreads new requests over the pool and
    steers them away from busy replicas, so the pool's headroom is its average; with
    max, one replica on a long generation or with a stuck reading would degrade every
    request. ``graph_queue`` is ``graph_in_flight / pool_capacity`` when the capacity
    is positive.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for report in reports:
        for name, raw in report.items():
            value = float(raw)
            if not math.isfinite(value):
                continue
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    signals = {name: total / counts[name] for name, total in sums.items()}
    if pool_capacity > 0:
        signals["graph_queue"] = graph_in_flight / pool_capacity
    return signals
