"""Devices and precisions: dtype "auto" picks bf16 on a CPU only where it is native, bf16
asked for on a CPU that emulates it warns, and devices this machine lacks are refused."""
import warnings

import pytest
import torch

from frfsr import FRFSR, FRFSRConfig, FRFSRPipeline, devices
from frfsr.checks import FRFSRWarning

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}


@pytest.fixture
def cpu_flags(monkeypatch):
    def use(flags):
        monkeypatch.setattr(devices, "_cpu_flags", lambda: frozenset(flags))
    return use


def test_auto_is_float32_on_an_avx2_cpu_and_bf16_where_native(cpu_flags):
    cpu_flags(AVX2_ONLY)
    assert devices.auto_dtype("cpu") == torch.float32
    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    cpu_flags(AVX512_BF16)
    assert devices.auto_dtype("cpu") == torch.bfloat16
    cpu_flags(AVX2_ONLY | {"amx_bf16"})
    assert devices.auto_dtype("cpu") == torch.bfloat16


def test_auto_on_this_machine_follows_its_cpu():
    flags = devices._cpu_flags()
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert devices.auto_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    if "avx2" in flags and not native:                  # an AVX2 machine such as CI's: float32
        assert devices.resolve_dtype("auto", "cpu") == torch.float32


def test_bf16_on_an_emulating_cpu_warns(cpu_flags, tmp_path):
    cpu_flags(AVX2_ONLY)
    with pytest.warns(FRFSRWarning, match="bfloat16 on this CPU is emulated .* slower than float32"):
        assert devices.resolve_dtype("bf16", "cpu") == torch.bfloat16
    torch.manual_seed(0)
    pipe = FRFSRPipeline(FRFSR(FRFSRConfig.tiny()))
    with pytest.warns(FRFSRWarning, match="emulated"):
        pipe.to(torch.bfloat16)
    pipe.to(torch.float32)
    pipe.save_pretrained(tmp_path / "m")
    with pytest.warns(FRFSRWarning, match="emulated"):
        FRFSRPipeline.from_pretrained(tmp_path / "m", torch_dtype="bfloat16")
    cpu_flags(AVX512_BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FRFSRWarning)
        assert devices.resolve_dtype("bf16", "cpu") == torch.bfloat16
        pipe.to(torch.bfloat16)
        assert devices.resolve_dtype("float32", "cpu") == torch.float32


def test_cli_dtype_defaults_to_auto(cpu_flags, tmp_path):
    from frfsr import cli
    cpu_flags(AVX2_ONLY)
    torch.manual_seed(0)
    FRFSRPipeline(FRFSR(FRFSRConfig.tiny())).save_pretrained(tmp_path / "m")
    parser = cli.build_parser()
    args = parser.parse_args(["upscale", "lr.png", "--ref", "r.png", "-o", "o.png", "--model", str(tmp_path / "m")])
    assert args.dtype == "auto"
    assert cli._load_pipeline(args, device="cpu", dtype=args.dtype).dtype == torch.float32
    cpu_flags(AVX512_BF16)
    assert cli._load_pipeline(args, device="cpu", dtype=args.dtype).dtype == torch.bfloat16


@pytest.mark.parametrize("device", ["cuda:7", "mps", "xpu"])
def test_missing_devices_are_refused_with_the_ones_there_are(device):
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    if kind == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match=rf"device '{device}' (is not available|does not exist).*available: cpu"):
        devices.parse_device(device)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        devices.parse_device("gpu0")
    assert devices.parse_device("cpu") == torch.device("cpu")
