"""Suite-wide settings. bf16 tests exercise true bf16 on every CPU: without this, a CPU without
native bf16 kernels would upcast bf16 models to float32 (see `diffae_core.runtime`), whose own
tests unset the variable."""

import os

import pytest
import torch

os.environ.setdefault("DIFFAE_CPU_BF16", "1")


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device a test should pass on: the CPU always, CUDA when there is one."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here (torch.cuda.is_available() is False)")
    return torch.device(request.param)


@pytest.fixture(scope="module")
def tiny_fcdm_diffae_folder(tmp_path_factory: pytest.TempPathFactory):
    """A tiny fcdm_diffae model (random weights and whitening) saved in the published layout:
    what the dataset-encoding and fault tests run."""
    from diffae_core.families import installed_families
    from diffae_testing import randomize_weights, randomize_whitening

    family = installed_families()["fcdm_diffae"]
    folder = tmp_path_factory.mktemp("model")
    model = randomize_whitening(randomize_weights(family.model_class(family.tiny_config)))
    model.save_pretrained(folder)
    return folder
