"""Model sources fail in a way a user can act on, and the GGUF conversion leaves no debris."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from mustafar import models
from mustafar.models import ModelConfig, ModelUnavailable


def test_local_folder_with_a_broken_config_says_so(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ModelUnavailable) as err:
        models.peek_context_length(ModelConfig(name="mine", source="local", path=str(tmp_path)))
    assert f"{tmp_path / 'config.json'} is broken" in str(err.value)
    assert "download" not in str(err.value)


def test_local_folder_without_config_says_so(tmp_path):
    with pytest.raises(ModelUnavailable, match="has no config.json"):
        models.peek_context_length(ModelConfig(name="mine", source="local", path=str(tmp_path)))


def test_local_folder_is_read_and_named_after_itself(tmp_path):
    folder = tmp_path / "my-llama"
    LlamaConfig(max_position_embeddings=2048).save_pretrained(folder)
    cfg = ModelConfig(source="local", path=str(folder))  # the README form on top of the default model
    assert cfg.name == "my-llama"
    assert models.peek_context_length(cfg) == 2048


def test_uncached_hub_model_offline_fails_at_once_with_the_hf_command(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = ModelConfig(name="nothere", source="hub", path="no-such-org/no-such-model-x")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        models.peek_context_length(cfg)
    assert time.monotonic() - started < 5
    assert "hf download no-such-org/no-such-model-x" in str(err.value)
    assert "huggingface-cli" not in str(err.value)


def test_unreachable_hub_is_one_quick_attempt(monkeypatch):
    """Online mode but no network: one probe, no minute of retries."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    cfg = ModelConfig(name="nothere", source="hub", path="no-such-org/no-such-model-y")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="is unreachable.*hf download"):
        models.peek_context_length(cfg)
    assert time.monotonic() - started < 10


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_conversion_temps_are_cleaned_and_live_ones_kept(tmp_path):
    host = socket.gethostname()
    stale = tmp_path / f".model-1.tmp-{host}-{dead_pid()}"
    live = tmp_path / f".model-1.tmp-{host}-{os.getpid()}"
    remote = tmp_path / f".model-1.tmp-otherhost-{dead_pid()}"
    legacy = tmp_path / f"model-1.tmp{dead_pid()}"  # the name an earlier version used
    done = tmp_path / "model-1"
    for folder in (stale, live, remote, legacy, done):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"0" * 16)
    assert models.clean_stale_temps(tmp_path) == sorted([stale, legacy])
    assert live.exists() and remote.exists() and done.exists()


def test_interrupted_conversion_leaves_no_temp_folder(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(models, "gguf_dir", lambda name: package)
    monkeypatch.setenv("MUSTAFAR_CACHE", str(tmp_path / "cache"))

    class Interrupted:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "part.bin").write_bytes(b"0" * 16)
            raise KeyboardInterrupt  # Ctrl-C halfway through writing

    class Model(Interrupted):
        def __init__(self):
            self.config = SimpleNamespace(quantization_config=None)  # the converter deletes it

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: Interrupted())
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: Model())
    with pytest.raises(KeyboardInterrupt):
        models.converted_gguf("pkg", "m.gguf")
    converted = tmp_path / "cache" / "converted"
    assert list(converted.iterdir()) == []
