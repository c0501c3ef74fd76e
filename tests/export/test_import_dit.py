"""`python -m export import diffusers` on a DiT pipeline layout, without Ray: the imported latent checkpoint
(transformer and VAE decoder as ONNX) sampled by the project's ddim with guidance equals diffusers' own
DiTPipeline from the same seed (it draws its latents with torch.randn from that generator, as `initial_noise`
does), with and without learned sigma; what cannot be mapped is refused in one line naming the setting.
The served check (over HTTP) is in tests/serving/test_import_serve.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.__main__ import main
from export.imports.diffusers_dit import import_dit
from export.imports.diffusers_scheduler import ImportRefused
from sampling.driver import sample
from sampling.request import SampleSpec, preview_of, to_data_space
from serving.backends import load_backend
from tests.export.import_helpers import DIT_SCHEDULER, tiny_dit_pipeline
from training.checkpoint import CheckpointError, load_checkpoint

diffusers = pytest.importorskip("diffusers")


def dit_pipeline_images(pipe, class_label: int, n: int, seed: int, steps: int, guidance: float) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        class_labels=[class_label] * n,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="np",
    )
    return out.images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def imported_images(ckpt_dir: Path, class_label: int, n: int, seed: int, steps: int, guidance: float) -> np.ndarray:
    ckpt = load_checkpoint(ckpt_dir)
    forward = load_backend("onnxruntime", ckpt, num_threads=1)
    spec = SampleSpec("ddim", steps, n, guidance=guidance, class_label=class_label, seed=seed)
    return to_data_space(ckpt, sample(ckpt, forward, spec))


@pytest.mark.parametrize("learned_sigma", [True, False])
def test_imported_dit_samples_equal_dit_pipeline(learned_sigma: bool, tmp_path: Path, capsys) -> None:
    pipe = tiny_dit_pipeline(learned_sigma=learned_sigma)
    pipe.save_pretrained(tmp_path / "pipe")
    rc = main(["import", "diffusers", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "dit")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "parity onnxruntime vs diffusers transformer" in printed and "AutoencoderKL.decode" in printed
    ckpt = load_checkpoint(tmp_path / "dit")
    assert ckpt.data_shape == (4, 4, 4) and ckpt.output_shape == (3, 8, 8)
    assert ckpt.num_classes == 1000 and ckpt.null_label == 1000  # DiTPipeline's null class
    assert ckpt.latent["scale_factor"] == 0.5 and ckpt.decoder_is_onnx
    assert ckpt.manifest["net"]["hparams"]["learned_sigma"] is learned_sigma
    for guidance in (4.0, 1.5):
        ref = dit_pipeline_images(pipe, 7, 3, seed=2, steps=5, guidance=guidance)
        ours = imported_images(tmp_path / "dit", 7, 3, seed=2, steps=5, guidance=guidance)
        assert ours.shape == ref.shape == (3, 3, 8, 8)
        assert ((ours > 0) & (ours < 1)).mean() > 0.3  # most values unclipped: the comparison means something
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    # The guidance matters at this size: different w, different images.
    w4, w15 = (imported_images(tmp_path / "dit", 7, 3, 2, 5, w) for w in (4.0, 1.5))
    assert np.abs(w4 - w15).max() > 1e-2
    # Its preview map is fitted to the ONNX decoder on standard-normal latents, and previews with it.
    info = ckpt.latent["preview"]
    assert info["latents"] == "standard normal" and info["fitted"] + info["held_out"] == 100
    z = torch.randn(6, *ckpt.data_shape, generator=torch.Generator().manual_seed(3))
    exact = to_data_space(ckpt, z)
    previewed = preview_of(ckpt)(z)
    assert previewed.shape == exact.shape and not np.allclose(previewed, exact)
    assert np.abs(previewed - exact).mean() < np.abs(exact - exact.mean()).mean()  # nearer than a flat image
    # The imported decoder is ONNX only, and a tampered graph is caught by its hash, naming the file.
    with pytest.raises(CheckpointError, match="decoder was imported as ONNX.*onnxruntime"):
        ckpt.decoder()
    path = tmp_path / "dit" / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="decoder.onnx"):
        load_checkpoint(tmp_path / "dit")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t, v, s: setattr_config(v, shift_factor=0.1), "shift_factor"),
        (lambda t, v, s: setattr_config(v, latents_mean=[0.0] * 4), "latents_mean"),
        (lambda t, v, s: setattr_config(v, latent_channels=8), "latent_channels"),
        (lambda t, v, s: setattr_config(t, out_channels=12), "out_channels"),
        (lambda t, v, s: setattr_config(t, norm_type="ada_norm_single"), "norm_type"),
        (lambda t, v, s: s.update(clip_sample=True), "clip_sample"),
        (lambda t, v, s: s.update(_class_name="EulerDiscreteScheduler"), "EulerDiscreteScheduler"),
    ],
)
def test_unmappable_dit_settings_are_refused_in_one_line(edit, field: str, tmp_path: Path) -> None:
    pipe = tiny_dit_pipeline()
    scheduler = dict(DIT_SCHEDULER, _class_name="DDIMScheduler")
    edit(pipe.transformer, pipe.vae, scheduler)
    with pytest.raises(ImportRefused) as e:
        import_dit(out=tmp_path / "dit", transformer=pipe.transformer, vae=pipe.vae, scheduler=scheduler)
    assert field in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "dit").exists()


def test_a_pipeline_without_its_vae_is_a_one_line_cli_error(tmp_path: Path, capsys) -> None:
    tiny_dit_pipeline().save_pretrained(tmp_path / "pipe")
    for part in (tmp_path / "pipe" / "vae").iterdir():
        part.unlink()
    (tmp_path / "pipe" / "vae").rmdir()
    rc = main(["import", "diffusers", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "vae" in err


def setattr_config(module, **changes) -> None:
    """Change a diffusers model's registered config in place (what a saved config.json with those values
    would load as; the refusals read the config before any weights matter)."""
    module.register_to_config(**changes)
