"""GPU paths: torch on CUDA (fused SDPA kernels, torch.compile, CUDA graphs with batch buckets),
onnxruntime's CUDA provider and TensorRT engines. Every check compares against the eager CPU net.

Tests marked `cuda` need a CUDA GPU and are skipped without one; scripts/gpu_check.sh runs them
(`pytest -m cuda`). The bucket arithmetic and the CPU refusals at the top run everywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from serving.backends import BackendUnavailable, load_backend
from serving.backends.cuda_graphs import bucket_for, chunks, validate_buckets
from serving.backends.torch_backend import TorchBackend
from tests.export.helpers import exported_checkpoints, sampler_run
from training.checkpoint import load_checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Convolutions may use TF32 on Ampere+ by default (the DiT's patch embedding is one), hence 1e-3 for
# results on the GPU, against 1e-4 for CPU runtimes.
GPU_TOLERANCE = 1e-3


def test_bucket_arithmetic():
    buckets = validate_buckets([64, 1, 8, 8, 2])
    assert buckets == (1, 2, 8, 64)
    assert [bucket_for(b, buckets) for b in (1, 2, 3, 8, 9, 64, 65)] == [1, 2, 8, 8, 64, 64, None]
    assert chunks(130, 64) == [(0, 64), (64, 128), (128, 130)]
    for bad in ([], [0, 4], [2.5], [True]):
        with pytest.raises(ValueError, match="bucket"):
            validate_buckets(bad)


def test_cuda_options_are_refused_on_the_cpu(tiny_checkpoints):
    ckpt = load_checkpoint(tiny_checkpoints["moons-fm"])
    with pytest.raises(ValueError, match="cuda_graphs and buckets need device='cuda'"):
        TorchBackend(ckpt, cuda_graphs=True)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA is not available"):
            TorchBackend(ckpt, device="cuda")


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    return exported_checkpoints(tiny_checkpoints, tmp_path_factory)


def _inputs(ckpt, batch: int, seed: int = 0):
    from export.parity import random_inputs

    return random_inputs(ckpt, batch, seed)


def _reference(ckpt, x, t, y) -> torch.Tensor:
    with torch.inference_mode():
        return ckpt.net()(x, t, y)


@pytest.mark.parametrize("name", ["moons-fm", "digits-fm"])
@pytest.mark.cuda
@needs_cuda
def test_torch_backend_on_cuda_matches_cpu(exported, name):
    ckpt = load_checkpoint(exported[name])
    backend = load_backend("torch", ckpt, device="cuda")
    for b in (1, 7, 64):
        x, t, y = _inputs(ckpt, b, b)
        out = backend(x, t, y)
        assert out.device.type == "cpu" and out.dtype == torch.float32
        assert (out - _reference(ckpt, x, t, y)).abs().max() <= GPU_TOLERANCE


@pytest.mark.cuda
@needs_cuda
def test_dit_attention_runs_on_fused_sdpa_kernels(exported):
    """Restricting SDPA to the fused kernels makes it raise if none applies; outputs must match math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ckpt = load_checkpoint(exported["digits-fm"])
    net = ckpt.net().cuda()
    x, t, y = (v.cuda() for v in _inputs(ckpt, 32))
    with torch.inference_mode():
        with sdpa_kernel([SDPBackend.MATH]):
            ref = net(x, t, y)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # fp32-capable fused kernel
            assert (net(x, t, y) - ref).abs().max() <= GPU_TOLERANCE
        # Flash needs fp16 / bf16 inputs: autocast gives them to SDPA while the time embedding stays fp32.
        with torch.autocast("cuda", dtype=torch.float16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = net(x, t, y).float()
    assert (out - ref).abs().max() <= 5e-2 * ref.abs().max().clamp(min=1)


@pytest.mark.parametrize("name", ["moons-fm", "digits-ddpm"])
@pytest.mark.cuda
@needs_cuda
def test_torch_compile_matches_eager(exported, name):
    ckpt = load_checkpoint(exported[name])
    backend = load_backend("torch", ckpt, device="cuda", compile=True)
    for b in (1, 16, 64):
        x, t, y = _inputs(ckpt, b, b)
        assert (backend(x, t, y) - _reference(ckpt, x, t, y)).abs().max() <= GPU_TOLERANCE


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.cuda
@needs_cuda
def test_cuda_graphs_with_buckets(exported, compiled):
    ckpt = load_checkpoint(exported["digits-fm"])
    backend = load_backend("torch", ckpt, device="cuda", compile=compiled, cuda_graphs=True, buckets=[1, 8, 64])
    # exact bucket, padded into a bigger bucket, and chunked past the largest
    for b in (1, 5, 8, 64, 150):
        x, t, y = _inputs(ckpt, b, b)
        out = backend(x, t, y)
        assert out.shape == x.shape
        assert (out - _reference(ckpt, x, t, y)).abs().max() <= GPU_TOLERANCE
    # a replay reads the new inputs, not the captured ones
    x1, t1, y1 = _inputs(ckpt, 5, 100)
    assert (backend(x1, t1, y1) - _reference(ckpt, x1, t1, y1)).abs().max() <= GPU_TOLERANCE


@pytest.mark.parametrize("name", ["moons-ddpm", "digits-fm"])
@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_sampler_run_matches_cpu(exported, name):
    """A whole guided sampler run, every step replayed from a captured graph (batch 16 -> bucket 16)."""
    ckpt = load_checkpoint(exported[name])
    graphed = load_backend("torch", ckpt, device="cuda", cuda_graphs=True, buckets=[16])
    cpu = load_backend("torch", ckpt)
    assert (sampler_run(ckpt, graphed) - sampler_run(ckpt, cpu)).abs().max() <= 1e-2


@pytest.mark.cuda
@needs_cuda
def test_onnxruntime_cuda_provider(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (the `gpu` extra)")
    ckpt = load_checkpoint(exported["digits-fm"])
    backend = load_backend("onnxruntime", ckpt, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backend.session.get_providers()[0] == "CUDAExecutionProvider"
    for b in (1, 7, 64):
        x, t, y = _inputs(ckpt, b, b)
        assert (backend(x, t, y) - _reference(ckpt, x, t, y)).abs().max() <= GPU_TOLERANCE


@pytest.mark.parametrize("name", ["moons-fm", "digits-fm"])
@pytest.mark.cuda
@needs_cuda
def test_tensorrt_engine_build_and_parity(exported, name, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (the `gpu` extra)")
    from export.tensorrt_build import BatchProfile, build_engine
    from tests.export.helpers import copy_checkpoint

    d = copy_checkpoint(exported[name], tmp_path)
    build_engine(load_checkpoint(d), "net-ema.onnx", BatchProfile(1, 16, 64), timing_cache=tmp_path / "tc")
    assert (tmp_path / "tc").stat().st_size > 0
    ckpt = load_checkpoint(d)
    info = ckpt.manifest["files"]["net-ema.plan"]
    assert info["role"] == "tensorrt" and info["profile"] == {"min": 1, "opt": 16, "max": 64}
    backend = load_backend("tensorrt", ckpt)
    assert backend.max_batch == 64
    for b in (1, 7, 64):
        x, t, y = _inputs(ckpt, b, b)
        assert (backend(x, t, y) - _reference(ckpt, x, t, y)).abs().max() <= GPU_TOLERANCE
    with pytest.raises(ValueError, match="outside the TensorRT engine's profile"):
        backend(*_inputs(ckpt, 65))


def test_a_cuda_decoder_is_refused_without_cuda(tiny_latent):
    from sampling.request import decoder_of

    ckpt = load_checkpoint(tiny_latent)
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="decoder: device 'cuda' asked for but CUDA is not available"):
        decoder_of(ckpt, "torch", device="cuda")


@pytest.mark.cuda
@needs_cuda
def test_the_decoder_on_cuda_matches_the_cpu(tiny_latent):
    """A latent model's decode stage beside a torch backend on the GPU: the decoder runs there, images come
    back on the CPU, equal to the CPU decoder's."""
    from sampling.request import decoder_of

    ckpt = load_checkpoint(tiny_latent)
    z = torch.randn(17, *ckpt.data_shape, generator=torch.Generator().manual_seed(0))
    on_gpu = decoder_of(ckpt, "torch", device="cuda")(z)
    assert on_gpu.device.type == "cpu"
    assert (on_gpu - decoder_of(ckpt, "torch")(z)).abs().max() <= GPU_TOLERANCE
