"""Where the model runs and in which precision: bf16 only where the CPU computes it natively."""

from __future__ import annotations

import warnings

import pytest
import torch

from coala_embed import device as dev


def test_bf16_is_not_native_when_onednn_is_capped_below_it(monkeypatch):
    # the way to try the AVX2 path on an AVX-512 BF16 machine: cap oneDNN's ISA
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert dev.bf16_native("cpu") is False
    assert dev.resolve_precision("auto", "cpu") == "fp32"


def test_bf16_follows_torchs_own_check(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert dev.bf16_native("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_asking_for_bf16_without_native_support_warns_once_and_runs_fp32(monkeypatch):
    monkeypatch.setattr(dev, "bf16_native", lambda device="cpu": False)
    dev._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="no native bfloat16.*slower.*fp32 is used"):
        assert dev.resolve_precision("bf16", "cpu") == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        assert dev.resolve_precision("bf16", "cpu") == "fp32"
    assert dev.resolve_precision("fp32", "cpu") == "fp32"


def test_bf16_runs_where_native(monkeypatch):
    monkeypatch.setattr(dev, "bf16_native", lambda device="cpu": True)
    assert dev.resolve_precision("bf16", "cpu") == dev.resolve_precision("auto", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        dev.resolve_precision("fp16", "cpu")


def test_cpu_name_names_the_isa():
    name = dev.cpu_name()
    assert name.endswith(")") and any(isa in name for isa in ("AVX2", "AVX-512", "AMX", "no AVX2"))


def test_training_precision_setting(monkeypatch):
    from training.fit.loop import train_precision

    monkeypatch.setattr(dev, "bf16_native", lambda device="cpu": False)
    dev._warn_once.cache_clear()
    cpu = torch.device("cpu")
    assert train_precision("auto", cpu) == "fp32" and train_precision(False, cpu) == "fp32"
    with pytest.warns(RuntimeWarning):
        assert train_precision(True, cpu) == "fp32"
    monkeypatch.setattr(dev, "bf16_native", lambda device="cpu": True)
    assert train_precision("auto", cpu) == "bf16" and train_precision(False, cpu) == "fp32"
    with pytest.raises(ValueError):
        train_precision("yes", cpu)


def test_cli_manifest_records_the_precision_that_ran(audio_dir, weights_dir, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from coala_embed.cli import main

    monkeypatch.setattr(dev, "bf16_native", lambda device="cpu": False)
    dev._warn_once.cache_clear()
    out = tmp_path / "f.npy"
    with pytest.warns(RuntimeWarning, match="fp32 is used"):
        r = CliRunner().invoke(main, [str(audio_dir), "-o", str(out), "--weights", str(weights_dir), "-q",
                                      "--precision", "bf16"], catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "f.manifest.json").read_text())["precision"] == "fp32"
