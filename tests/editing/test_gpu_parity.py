"""CPU/GPU parity of the editing stages on a tiny model: the same keys, targets, spread
and deltas on either device. Skipped without CUDA; ``scripts/gpu-check`` runs them."""

from __future__ import annotations

import copy

import pytest
import torch

from factsync.editing.keys import subject_states
from factsync.editing.requests import EditRequest
from factsync.editing.targets import optimise_targets

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REQUESTS = [
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Italy", "French"),
    EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
]


@pytest.fixture
def both(tiny_loaded, tiny_engine):
    """The same tiny model and engine on the CPU and on CUDA."""
    cpu = tiny_loaded()
    gpu = copy.deepcopy(cpu)
    gpu.model.to("cuda")
    return tiny_engine(cpu), tiny_engine(gpu)


def close(cpu: torch.Tensor, gpu: torch.Tensor, tolerance: float) -> None:
    scale = cpu.abs().max().clamp(min=1e-6)
    assert float((cpu - gpu.cpu()).abs().max() / scale) < tolerance


def test_key_statistics_and_keys_agree(both):
    on_cpu, on_gpu = both
    for layer in on_cpu.layers:
        close(on_cpu.statistics[layer].second_moment, on_gpu.statistics[layer].second_moment,
              1e-4)
    prompts = [(r.template, r.subject) for r in REQUESTS]
    last = on_cpu.layers[-1]
    for layer in on_cpu.layers:
        cpu = subject_states(on_cpu.loaded, prompts, layer, last, on_cpu.contexts)
        gpu = subject_states(on_gpu.loaded, prompts, layer, last, on_gpu.contexts)
        close(cpu.keys, gpu.keys, 1e-4)
        close(cpu.outputs, gpu.outputs, 1e-4)


def test_targets_and_deltas_agree(both):
    on_cpu, on_gpu = both
    last = on_cpu.layers[-1]
    cpu_z = optimise_targets(on_cpu.loaded, REQUESTS, last, on_cpu.contexts,
                             on_cpu.settings.target, use_neighbours=False)
    gpu_z = optimise_targets(on_gpu.loaded, REQUESTS, last, on_gpu.contexts,
                             on_gpu.settings.target, use_neighbours=False)
    close(cpu_z.z, gpu_z.z, 1e-2)
    cpu_delta, gpu_delta = on_cpu.edit(REQUESTS).delta, on_gpu.edit(REQUESTS).delta
    assert cpu_delta.layers.keys() == gpu_delta.layers.keys()
    for path, update in cpu_delta.layers.items():
        close(update.matrix("out_in"), gpu_delta.layers[path].matrix("out_in"), 2e-2)
