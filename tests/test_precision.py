"""`${native_precision:${device}}`: bf16 where the device computes it natively, else fp32 (mimiq.native_precision)."""

import pytest
import torch
from conftest import compose_cfg

from mimiq import NATIVE_BF16_PROBES, native_precision


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")],
)
def test_cpu_precision_follows_the_native_bf16_probes(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_precision("cpu") == expected


def test_a_torch_without_the_probes_gets_fp32(monkeypatch):
    for probe in NATIVE_BF16_PROBES:
        monkeypatch.delattr(torch.cpu, probe)
    assert native_precision("cpu") == "fp32"


def test_a_cuda_device_on_a_machine_without_cuda_gets_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_precision("cuda") == "fp32" and native_precision("cuda:1") == "fp32"
    assert native_precision("auto") == native_precision("cpu")


def test_cuda_precision_asks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert native_precision("cuda") == expected


def test_the_resolver_gives_the_probe_s_answer_in_a_composed_config(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        cfg = compose_cfg(["device=cpu", "precision='${native_precision:${device}}'"])
        assert cfg.precision == ("bf16" if native else "fp32")
