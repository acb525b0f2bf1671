"""Tests of the load samplers (fake NVML, fake /proc/stat) and report aggregation."""

from __future__ import annotations

import ctypes
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from serve_app.config.models import ControllerUserConfig
from serve_app.load.policy import LoadPolicy, LoadSample
from serve_app.load.signals import (
    CpuSampler,
    GpuReading,
    GpuSampler,
    GpuStat,
    aggregate_reports,
    replica_signals,
)

GPU_IS_LOST = 15
NO_PERMISSION = 4
LIBRARY_NOT_FOUND = 12
UNINITIALIZED = 1

# --- a fake NVML ------------------------------------------------------------------


class FakeNVMLError(Exception):
    """Like pynvml.NVMLError: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error {self.value}"


@dataclass
class FakeGpu:
    uuid: str
    util_percent: int
    used: int
    total: int = 16_000


@dataclass(frozen=True)
class FakeHandle:
    index: int


class FakeNvml:
    """The part of pynvml that GpuSampler calls, with failure injection."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.failures: dict[str, Exception] = {}
        self.initialised = False
        self.calls: dict[str, int] = {}

    def _call(self, name: str, needs_init: bool = True) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.failures:
            raise self.failures[name]
        if needs_init and not self.initialised:
            raise FakeNVMLError(UNINITIALIZED)

    def nvmlInit(self) -> None:
        self._call("nvmlInit", needs_init=False)
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(2)
        return FakeHandle(index)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> bytes:
        self._call("nvmlDeviceGetUUID")
        return self.gpus[handle.index].uuid.encode()  # older pynvml returns bytes

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> SimpleNamespace:
        self._call("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.gpus[handle.index].util_percent, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle) -> SimpleNamespace:
        self._call("nvmlDeviceGetMemoryInfo")
        gpu = self.gpus[handle.index]
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)


def three_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu("GPU-aaaa1111-0000", util_percent=10, used=4_000),
            FakeGpu("GPU-bbbb2222-0000", util_percent=90, used=2_000),
            FakeGpu("GPU-cccc3333-0000", util_percent=40, used=12_000),
        ]
    )


# --- GpuSampler -------------------------------------------------------------------


def test_all_gpus_when_cuda_visible_devices_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reading = GpuSampler(nvml=three_gpus()).sample()
    assert reading.state == "ok" and reading.ok
    assert [gpu.index for gpu in reading.gpus] == [0, 1, 2]
    assert reading.utilisation == pytest.approx([0.1, 0.9, 0.4])
    assert reading.memory == pytest.approx([0.25, 0.125, 0.75])
    assert reading.max_util == pytest.approx(0.9)
    assert reading.max_memory == pytest.approx(0.75)
    assert reading.gpus[1].uuid == "GPU-bbbb2222-0000"


def test_cuda_visible_devices_by_index_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    reading = GpuSampler(nvml=three_gpus()).sample()
    assert [gpu.index for gpu in reading.gpus] == [2, 0]
    assert reading.max_util == pytest.approx(0.4)  # the busy GPU 1 is not ours


@pytest.mark.parametrize(
    ("spec", "indices"),
    [
        ("GPU-bbbb2222-0000", [1]),
        ("GPU-cccc3333-0000,GPU-aaaa1111-0000", [2, 0]),
        ("GPU-bbbb", [1]),  # a unique prefix, as CUDA accepts
        ("1, GPU-cccc3333-0000", [1, 2]),
    ],
)
def test_cuda_visible_devices_by_uuid(spec: str, indices: list[int]) -> None:
    reading = GpuSampler(nvml=three_gpus(), visible_devices=spec).sample()
    assert [gpu.index for gpu in reading.gpus] == indices


@pytest.mark.parametrize(
    ("spec", "indices"),
    [
        ("0,7,1", [0]),  # CUDA stops at the first invalid entry
        ("1,-1,2", [1]),
        ("GPU-nope,0", []),
        ("GPU-", []),  # ambiguous prefix: matches every GPU
        ("1,1", [1]),
    ],
)
def test_invalid_entries_end_the_visible_list(spec: str, indices: list[int]) -> None:
    reading = GpuSampler(nvml=three_gpus(), visible_devices=spec).sample()
    assert [gpu.index for gpu in reading.gpus] == indices
    assert reading.state == ("ok" if indices else "no_gpu")


def test_empty_cuda_visible_devices_means_no_gpu() -> None:
    reading = GpuSampler(nvml=three_gpus(), visible_devices="").sample()
    assert (reading.state, reading.gpus, reading.max_util) == ("no_gpu", (), None)
    assert not reading.ok


def test_mig_devices_are_reported_as_unsupported() -> None:
    reading = GpuSampler(nvml=three_gpus(), visible_devices="MIG-1234").sample()
    assert reading.state.startswith("error: MIG device")
    assert reading.gpus == ()


def test_host_without_gpus_is_no_gpu() -> None:
    reading = GpuSampler(nvml=FakeNvml([]), visible_devices=None).sample()
    assert reading.state == "no_gpu"


def test_nvml_is_initialised_once_lazily_and_closed() -> None:
    nvml = three_gpus()
    sampler = GpuSampler(nvml=nvml)
    assert nvml.calls == {}
    sampler.sample()
    sampler.sample()
    assert nvml.calls["nvmlInit"] == 1
    assert nvml.calls["nvmlDeviceGetCount"] == 1  # handles resolved once
    sampler.close()
    assert nvml.calls["nvmlShutdown"] == 1 and not nvml.initialised
    sampler.close()
    assert nvml.calls["nvmlShutdown"] == 1
    assert sampler.sample().state == "ok"  # initialises again after close
    assert nvml.calls["nvmlInit"] == 2


def test_close_without_sampling_does_not_touch_nvml() -> None:
    nvml = three_gpus()
    GpuSampler(nvml=nvml).close()
    assert nvml.calls == {}


def test_missing_driver_is_a_state_and_not_retried() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", 50, 1)], init_error=LIBRARY_NOT_FOUND)
    sampler = GpuSampler(nvml=nvml)
    assert sampler.sample() == GpuReading("no_driver")
    assert sampler.sample() == GpuReading("no_driver")
    assert nvml.calls["nvmlInit"] == 1


def test_other_init_errors_are_reported_and_retried() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", 50, 8_000)], init_error=NO_PERMISSION)
    sampler = GpuSampler(nvml=nvml)
    reading = sampler.sample()
    assert reading.state == f"error: NVML error {NO_PERMISSION}" and reading.gpus == ()
    nvml.init_error = None
    assert sampler.sample().max_util == pytest.approx(0.5)
    assert nvml.calls["nvmlInit"] == 2


def test_errors_mid_run_become_states_and_the_sampler_recovers() -> None:
    nvml = three_gpus()
    sampler = GpuSampler(nvml=nvml)
    assert sampler.sample().ok
    nvml.failures["nvmlDeviceGetUtilizationRates"] = FakeNVMLError(GPU_IS_LOST)
    lost = sampler.sample()
    assert lost.state == f"error: NVML error {GPU_IS_LOST}"
    assert (lost.gpus, lost.utilisation, lost.memory) == ((), [], [])
    del nvml.failures["nvmlDeviceGetUtilizationRates"]
    nvml.gpus[1].util_percent = 20
    back = sampler.sample()
    assert back.ok and back.max_util == pytest.approx(0.4)
    assert nvml.calls["nvmlDeviceGetCount"] == 2  # handles were resolved again


def test_unexpected_exceptions_never_escape() -> None:
    nvml = three_gpus()
    nvml.failures["nvmlDeviceGetMemoryInfo"] = RuntimeError("boom")
    reading = GpuSampler(nvml=nvml).sample()
    assert reading.state == "error: boom"


def test_zero_total_memory_reads_as_zero() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a", 30, used=0, total=0)])
    assert GpuSampler(nvml=nvml).sample().memory == [0.0]


def test_pynvml_not_importable_is_an_error_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    reading = GpuSampler().sample()
    assert reading.state.startswith("error: pynvml not importable")


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is installed here")
def test_real_pynvml_without_a_driver_reads_no_driver() -> None:
    sampler = GpuSampler()
    assert sampler.sample() == GpuReading("no_driver")
    sampler.close()


# --- CpuSampler -------------------------------------------------------------------


def write_stat(path: Path, cpu_line: str) -> None:
    path.write_text(f"{cpu_line}\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n", encoding="ascii")


def test_cpu_first_call_primes_then_reports_the_busy_fraction(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write_stat(stat, "cpu  100 0 100 800 0 0 0 0 0 0")
    sampler = CpuSampler(proc_stat=stat)
    assert sampler.sample() is None
    # +150 user, +50 system, +100 idle, +100 iowait, +50 guest (already inside user).
    write_stat(stat, "cpu  250 0 150 900 100 0 0 0 50 0")
    assert sampler.sample() == pytest.approx(0.5)
    write_stat(stat, "cpu  650 0 150 900 100 0 0 0 50 0")
    assert sampler.sample() == pytest.approx(1.0)


def test_cpu_without_progress_repeats_the_last_value(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write_stat(stat, "cpu  100 0 100 800 0 0 0 0 0 0")
    sampler = CpuSampler(proc_stat=stat)
    sampler.sample()
    assert sampler.sample() is None  # nothing measured yet
    write_stat(stat, "cpu  175 0 125 900 0 0 0 0 0 0")
    assert sampler.sample() == pytest.approx(0.5)
    assert sampler.sample() == pytest.approx(0.5)


def test_cpu_falls_back_to_loadavg_without_proc_stat(tmp_path: Path) -> None:
    sampler = CpuSampler(
        proc_stat=tmp_path / "absent", loadavg=lambda: (3.0, 1.0, 1.0), cpu_count=lambda: 4
    )
    assert sampler.sample() == pytest.approx(0.75)
    overloaded = CpuSampler(
        proc_stat=tmp_path / "absent", loadavg=lambda: (6.0, 1.0, 1.0), cpu_count=lambda: None
    )
    assert overloaded.sample() == pytest.approx(6.0)


def test_cpu_malformed_proc_stat_falls_back(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("intr 1 2 3\n", encoding="ascii")
    sampler = CpuSampler(proc_stat=stat, loadavg=lambda: (1.0, 0.0, 0.0), cpu_count=lambda: 2)
    assert sampler.sample() == pytest.approx(0.5)


def test_cpu_without_any_source_is_none(tmp_path: Path) -> None:
    def no_loadavg() -> tuple[float, float, float]:
        raise OSError("unavailable")

    sampler = CpuSampler(proc_stat=tmp_path / "absent", loadavg=no_loadavg)
    assert sampler.sample() is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat")
def test_cpu_real_proc_stat_reads_a_fraction() -> None:
    sampler = CpuSampler()
    assert sampler.sample() is None
    value = sampler.sample()
    assert value is None or 0.0 <= value <= 1.0


# --- replica_signals / aggregate_reports ------------------------------------------


def gpu_reading(*pairs: tuple[float, float]) -> GpuReading:
    return GpuReading(
        "ok", tuple(GpuStat(i, f"GPU-{i}", util, mem) for i, (util, mem) in enumerate(pairs))
    )


def test_replica_signals_with_everything_known() -> None:
    signals = replica_signals(
        gpu_reading((0.3, 0.9), (0.7, 0.2)),
        cpu=0.25,
        in_flight=3,
        max_ongoing=4,
        waiting=5,
        kv_cache_usage=0.6,
    )
    assert signals == {
        "gpu_util": pytest.approx(0.7),
        "gpu_memory": pytest.approx(0.9),
        "cpu": pytest.approx(0.25),
        "engine_in_flight": pytest.approx(0.75),
        "engine_waiting": pytest.approx(5.0),
        "kv_cache": pytest.approx(0.6),
    }


@pytest.mark.parametrize("gpu", [None, GpuReading("no_driver"), GpuReading("error: lost")])
def test_replica_signals_leave_out_what_is_unknown(gpu: GpuReading | None) -> None:
    signals = replica_signals(
        gpu, cpu=None, in_flight=0, max_ongoing=2, waiting=None, kv_cache_usage=None
    )
    assert signals == {"engine_in_flight": 0.0}


def test_replica_signals_without_capacity_leave_out_in_flight() -> None:
    assert replica_signals(None, None, 1, 0, None, None) == {}


def test_aggregate_reports_means_each_signal_over_its_reporters() -> None:
    reports: list[dict[str, float]] = [
        {"gpu_util": 0.9, "kv_cache": 0.5, "engine_waiting": 4.0},
        {"gpu_util": 0.3, "engine_waiting": math.nan},
        {"gpu_util": 0.6},
    ]
    signals = aggregate_reports(reports, graph_in_flight=6, pool_capacity=8)
    assert signals == {
        "gpu_util": pytest.approx(0.6),
        "kv_cache": pytest.approx(0.5),
        "engine_waiting": pytest.approx(4.0),
        "graph_queue": pytest.approx(0.75),
    }


def test_aggregate_reports_without_capacity_or_reports() -> None:
    assert aggregate_reports([], graph_in_flight=3, pool_capacity=0) == {}
    assert aggregate_reports([], graph_in_flight=3, pool_capacity=2) == {"graph_queue": 1.5}


def test_reports_flow_into_a_policy_decision() -> None:
    nvml = three_gpus()
    replica = replica_signals(
        GpuSampler(nvml=nvml, visible_devices="1").sample(),
        cpu=None,
        in_flight=1,
        max_ongoing=4,
        waiting=0,
        kv_cache_usage=0.2,
    )
    idle = replica_signals(None, None, 0, 4, 0, 0.0)
    policy = LoadPolicy(ControllerUserConfig(enter_samples=1))
    decision = policy.step(LoadSample(at=0.0, signals=aggregate_reports([replica, idle], 1, 8)))
    # Only one replica read a GPU, so the mean gpu_util is its 0.9 and it dominates.
    assert decision.dominant == "gpu_util"
    assert decision.load == pytest.approx(0.9)
    assert decision.level == 1
    assert decision.loads["graph_queue"] == pytest.approx(0.125)
