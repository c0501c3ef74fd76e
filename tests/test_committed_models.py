"""The checkpoints committed in models/ (defaults and knob variants) load with the current code and format."""

import pytest
import torch

from tests.conftest import DEFAULT_MODELS, DISTILLED_MODELS, KNOB_MODELS, LATENT_MODELS, ROOT
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.paths import objective_from_dict


@pytest.mark.parametrize("name", DEFAULT_MODELS + KNOB_MODELS + DISTILLED_MODELS + LATENT_MODELS)
def test_committed_checkpoint_loads_and_runs(name):
    d = ROOT / "models" / name
    assert (d / "manifest.json").is_file(), f"{d} is missing: run `make train` and commit models/"
    ckpt = load_checkpoint(d)  # verifies every sha256
    assert ckpt.name == name
    assert ckpt.manifest["training"]["steps"] == ckpt.manifest["training"]["planned_steps"]  # fully trained
    net = ckpt.net("ema")
    x = torch.randn(3, *ckpt.data_shape)
    out = net(x, torch.zeros(3), torch.tensor([0, 1, ckpt.null_label]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", DEFAULT_MODELS + KNOB_MODELS + DISTILLED_MODELS + LATENT_MODELS)
def test_the_default_spacing_is_the_configs(name):
    """What a request that names no spacing gets (the manifest's `sampling`) is what the model's config chose
    (moons-ddpm and digits-ddpm by measurement, docs/knobs.md)."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert load_checkpoint(ROOT / "models" / name).default_spacing == cfg.sampling.spacing


@pytest.mark.parametrize("name", KNOB_MODELS)
def test_knob_variant_manifest_records_its_config(name):
    """The manifest carries what the variant varies (schedule, target, path, net), as its config says."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    ckpt = load_checkpoint(ROOT / "models" / name)
    assert ckpt.objective == objective_from_dict(cfg.objective)
    assert ckpt.manifest["objective"] == objective_from_dict(cfg.objective).to_dict()
    assert ckpt.manifest["net"]["kind"] == cfg.net["kind"]


@pytest.mark.parametrize("name", DISTILLED_MODELS)
def test_distilled_student_was_drawn_from_the_committed_teacher(name):
    """A student records the teacher whose couplings it learned; retraining the teacher makes it stale, and this
    says so (`make train` distills again after training)."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    rf = load_checkpoint(ROOT / "models" / name).manifest["training"]["reflow"]
    teacher = load_checkpoint(ROOT / cfg.reflow.teacher)
    assert rf["teacher"] == teacher.name
    assert rf["teacher_weights_sha256"] == teacher.manifest["files"]["ema.safetensors"]["sha256"], (
        f"{name} was distilled from other weights of {teacher.name}: run `make train`"
    )
    assert (rf["pairs"], rf["sampler"], rf["steps"]) == (cfg.reflow.pairs, cfg.reflow.sampler, cfg.reflow.steps)


MIN_PSNR_DB = 25.0  # the committed VAE measured 27.2 dB held out


def test_committed_autoencoder_loads_and_reconstructs_as_recorded():
    """models/shapes-vae (python -m training.autoencoder, configs/shapes-vae.yaml): every hash checks, it was
    trained as its config says, its latents have the recorded shape, and on a fresh draw of shapes (not its
    training seed nor its held-out one) its reconstructions' PSNR is within 1 dB of the held-out figure the
    manifest records, which is at least MIN_PSNR_DB."""
    from training.autoencoder import load_autoencoder, load_vae_config, psnr
    from training.shapes import shapes_raw

    cfg = load_vae_config(ROOT / "configs" / "shapes-vae.yaml")
    ae = load_autoencoder(ROOT / "models" / "shapes-vae")
    assert ae.manifest["name"] == cfg.name and ae.manifest["training"]["steps"] == cfg.train.steps
    vae = ae.vae()
    x = torch.from_numpy(shapes_raw(200, seed=777)[0]) * 2 - 1
    with torch.no_grad():
        assert tuple(vae.encode(x[:2])[0].shape[1:]) == ae.latent_shape == (4, 8, 8)
    recorded = ae.manifest["training"]["held_out_psnr_db"]
    assert recorded >= MIN_PSNR_DB
    assert psnr(vae, x) == pytest.approx(recorded, abs=1.0)


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_a_committed_latent_model_holds_the_committed_autoencoders_decoder(name):
    """Its decoder is the EMA decoder half of models/shapes-vae as committed (retraining the VAE makes it stale,
    and this says so), with the VAE's scale factor, and it decodes to 32x32 RGB."""
    from safetensors.torch import load_file

    from training.autoencoder import load_autoencoder

    ckpt = load_checkpoint(ROOT / "models" / name)
    ae = load_autoencoder(ROOT / "models" / "shapes-vae")
    assert ckpt.latent["autoencoder"]["ema_sha256"] == ae.manifest["files"]["ema.safetensors"]["sha256"], (
        f"{name} was trained on the latents of other weights of shapes-vae: run `make train`"
    )
    assert ckpt.latent["scale_factor"] == ae.scale_factor
    ema = load_file(str(ae.path / "ema.safetensors"))
    decoder = ckpt.decoder().state_dict()
    assert all(torch.equal(v, ema[f"decoder.{k}"]) for k, v in decoder.items())
    with torch.no_grad():
        assert ckpt.decoder()(torch.randn(2, *ckpt.data_shape)).shape == (2, 3, 32, 32)
