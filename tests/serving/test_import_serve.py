"""Imported nets served over real HTTP with the onnxruntime backend on a real local Ray Serve.

(a) A seeded tiny diffusers UNet2DModel saved as a DDIMPipeline (scheduler: v_prediction, squaredcos_cap_v2,
clip_sample false, leading spacing) goes through `python -m export import diffusers`; its DDIM samples over HTTP
equal diffusers' own DDIMPipeline run from the same seed (the pipeline draws its noise with torch.randn from
that generator, as `initial_noise` does), for leading (the imported default) and trailing spacing, eta 0 and
0.5. (b) A tiny torch net exported to ONNX elsewhere plus a YAML spec goes through `python -m export import
onnx`; its guided fm-euler samples equal the torch net driven by the project's sampler in this process. (c) A
tiny DiT pipeline (learned sigma, 1000 classes, AutoencoderKL) goes through `python -m export import diffusers`;
its guided DDIM images over HTTP (decoded by the replica's decode stage with the imported decoder.onnx) equal
DiTPipeline's from the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from export.__main__ import main
from sampling import samplers
from sampling.driver import run_sampler
from sampling.guidance import labels
from sampling.request import initial_noise
from tests.export.import_helpers import FM_SPEC, TinyFMNet, export_tiny_fm, tiny_dit_pipeline, tiny_unet
from tests.export.test_import_dit import dit_pipeline_images
from tests.serving.conftest import app_args
from training.paths import FMObjective

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow
SCHEDULER = {"clip_sample": False, "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    pipe = diffusers.DDIMPipeline(unet=tiny_unet(), scheduler=diffusers.DDIMScheduler(**SCHEDULER))
    pipe.save_pretrained(root / "pipe")
    assert main(["import", "diffusers", "--model", str(root / "pipe"), "--out", str(root / "unet-ddim")]) == 0
    onnx_path = export_tiny_fm(root / "tiny.onnx", TinyFMNet())
    (root / "spec.yaml").write_text(FM_SPEC)
    args = ["import", "onnx", "--onnx", str(onnx_path), "--spec", str(root / "spec.yaml"), "--out", str(root / "fm")]
    assert main(args) == 0
    tiny_dit_pipeline().save_pretrained(root / "dit-pipe")
    assert main(["import", "diffusers", "--model", str(root / "dit-pipe"), "--out", str(root / "dit")]) == 0
    return {"unet-ddim": root / "unet-ddim", "tiny-fm": root / "fm", "tiny-dit": root / "dit"}


def test_imported_onnx_equals_the_unet_on_random_inputs(imported: dict[str, Path]) -> None:
    from export.parity import ort_forward

    forward = ort_forward(imported["unet-ddim"] / "net-ema.onnx", num_threads=1)
    unet = tiny_unet()
    g = torch.Generator().manual_seed(11)
    x, t = torch.randn((6, 1, 8, 8), generator=g), torch.randint(0, 1000, (6,), generator=g)
    with torch.no_grad():
        ref = unet(x, t).sample
    assert ref.abs().max() > 0.1
    assert (forward(x, t.float(), torch.zeros(6, dtype=torch.long)) - ref).abs().max() < 1e-5


@pytest.fixture(scope="module")
def url(serve_cluster, imported: dict[str, Path]) -> Iterator[str]:
    yield serve_cluster.deploy("imported", "/imported", app_args(imported, backend="onnxruntime"))
    serve_cluster.delete("imported")  # its replicas would idle-poll through every later module


def test_models_lists_the_imported_models(url: str) -> None:
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["models"]}
    assert set(models) == {"unet-ddim", "tiny-fm", "tiny-dit"}
    assert models["unet-ddim"]["objective"] == {"kind": "ddpm", "schedule": "cosine", "target": "v"}
    assert {"ddim", "ddpm", "dpm-solver++", "heun"} <= set(models["unet-ddim"]["samplers"])
    assert models["unet-ddim"]["backend"] == "onnxruntime" and models["tiny-fm"]["classes"] == [0, 1]
    dit = models["tiny-dit"]
    assert dit["output_shape"] == [3, 8, 8] and dit["latent"] and len(dit["classes"]) == 1000


@pytest.mark.parametrize(("spacing", "eta"), [(None, 0.0), ("trailing", 0.0), ("leading", 0.5)])
def test_ddim_over_http_equals_ddim_pipeline(url: str, spacing: str | None, eta: float) -> None:
    body = {"model": "unet-ddim", "sampler": "ddim", "steps": 4, "num_samples": 3, "seed": 5, "eta": eta}
    if spacing is not None:
        body["spacing"] = spacing
    r = httpx.post(f"{url}/v1/samples", json=body, timeout=120)
    assert r.status_code == 200, r.text
    served = np.asarray(r.json()["samples"], dtype=np.float32)
    sched = diffusers.DDIMScheduler(**SCHEDULER, timestep_spacing=spacing or "leading")
    pipe = diffusers.DDIMPipeline(unet=tiny_unet(), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(torch.randn((3, 1, 8, 8), generator=gen), initial_noise((1, 8, 8), 3, 5)[0])
    ref = pipe(
        batch_size=3, generator=torch.Generator().manual_seed(5), eta=eta, num_inference_steps=4, output_type="pt"
    )
    ref = ref.images.numpy()
    assert ((ref > 0) & (ref < 1)).mean() > 0.3  # most values unclipped: the comparison means something
    assert np.abs(served - ref).max() < 1e-4


def test_onnx_and_yaml_model_served_equals_its_torch_net(url: str) -> None:
    body = {"model": "tiny-fm", "sampler": "fm-euler", "steps": 5, "num_samples": 4, "seed": 9, "guidance": 2.0}
    r = httpx.post(f"{url}/v1/samples", json={**body, "class_label": 1}, timeout=60)
    assert r.status_code == 200, r.text
    noise, gen = initial_noise((3,), 4, 9)
    x = run_sampler(
        samplers.start("fm-euler", FMObjective(), noise, 5, gen), TinyFMNet(), labels(4, 1, 2), 2.0, null_label=2
    )
    data = x * 2.0 + torch.tensor([1.0, 2.0, 3.0])  # the spec's normalization: std 2, mean (1, 2, 3)
    assert np.abs(np.asarray(r.json()["samples"]) - data.numpy()).max() < 1e-4


def test_imported_dit_over_http_equals_dit_pipeline(url: str) -> None:
    body = {"model": "tiny-dit", "sampler": "ddim", "steps": 5, "num_samples": 3, "seed": 2, "guidance": 4.0}
    r = httpx.post(f"{url}/v1/samples", json={**body, "class_label": 7}, timeout=120)
    assert r.status_code == 200, r.text
    served = np.asarray(r.json()["samples"], dtype=np.float32)
    ref = dit_pipeline_images(tiny_dit_pipeline(), 7, 3, seed=2, steps=5, guidance=4.0)
    assert served.shape == ref.shape == (3, 3, 8, 8)
    assert ((ref > 0) & (ref < 1)).mean() > 0.3
    assert np.abs(served - ref).max() < 1e-4
