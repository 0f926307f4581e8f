"""Models load only from safetensors, and a model's own code runs only when allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factsync.daemon.config import load_config
from factsync.models.loading import ModelLoadError, load_model

# Written into a model directory: it leaves a mark when transformers imports it.
CUSTOM_CODE = '''
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path("MARKER").write_text("yes")


class ShinyConfig(LlamaConfig):
    model_type = "shiny"


class ShinyForCausalLM(LlamaForCausalLM):
    config_class = ShinyConfig
'''


@pytest.fixture
def saved_tiny(tmp_path, tiny_loaded) -> Path:
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_pickled_weights_are_refused_without_being_read(saved_tiny):
    (saved_tiny / "model.safetensors").unlink()
    (saved_tiny / "pytorch_model.bin").write_bytes(b"not even a pickle: never opened")
    with pytest.raises(ModelLoadError, match=r"no \.safetensors weights \(only pytorch_model\.bin"
                       r"\); factsync never loads pickle files"):
        load_model(str(saved_tiny), device="cpu")


def test_a_models_own_code_runs_only_when_the_config_allows_it(saved_tiny):
    marker = saved_tiny / "code-ran"  # transformers imports a copy, so use a fixed path
    (saved_tiny / "shiny.py").write_text(CUSTOM_CODE.replace("MARKER", str(marker)))
    config = json.loads((saved_tiny / "config.json").read_text())
    config.update(model_type="shiny", architectures=["ShinyForCausalLM"],
                  auto_map={"AutoConfig": "shiny.ShinyConfig",
                            "AutoModelForCausalLM": "shiny.ShinyForCausalLM"})
    (saved_tiny / "config.json").write_text(json.dumps(config))

    with pytest.raises(ModelLoadError, match="model.trust_remote_code: true"):
        load_model(str(saved_tiny), device="cpu")
    assert not marker.exists()

    with pytest.raises(ValueError, match="no architecture spec for model_type 'shiny'"):
        load_model(str(saved_tiny), device="cpu", trust_remote_code=True)
    assert marker.exists()  # allowed, it ran (then no spec matched)


def test_trust_remote_code_is_off_unless_the_config_turns_it_on(tmp_path, saved_tiny):
    assert load_config(None).model.trust_remote_code is False
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"model": {"path": str(saved_tiny), "trust_remote_code": True}}))
    assert load_config(path).model.trust_remote_code is True
