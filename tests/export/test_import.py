"""Import of nets made elsewhere, without Ray: diffusers scheduler settings mapped or refused, the ONNX + YAML
importer's spec checks, the CLI's one-line errors, and an ONNX-only checkpoint refusing the torch backend.
The served end-to-end checks (DDIM over HTTP against DDIMPipeline) are in tests/serving/test_import_serve.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.__main__ import main
from export.imports.diffusers_scheduler import ImportRefused, map_scheduler
from export.imports.onnx_file import import_onnx
from sampling import samplers
from sampling.driver import run_sampler
from sampling.request import initial_noise
from serving.app import assemble
from serving.backends import load_backend
from tests.export.import_helpers import FM_SPEC, TinyFMNet, export_tiny_fm, tiny_unet
from training.checkpoint import CheckpointError

diffusers = pytest.importorskip("diffusers")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("settings", "schedule", "target", "spacing"),
    [
        ({"beta_schedule": "linear", "prediction_type": "epsilon"}, "linear", "eps", "leading"),
        ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}, "cosine", "v", "leading"),
        ({"prediction_type": "sample", "timestep_spacing": "trailing"}, "linear", "x0", "trailing"),
    ],
)
def test_ddim_scheduler_maps_onto_the_same_alpha_bar(settings, schedule, target, spacing) -> None:
    sched = diffusers.DDIMScheduler(clip_sample=False, **settings)
    m = map_scheduler(dict(sched.config, _class_name="DDIMScheduler"))
    assert (m.objective.schedule_name, m.objective.target, m.spacing) == (schedule, target, spacing)
    # diffusers keeps alpha_bar in float32; the project in float64.
    ours = m.objective.schedule.alpha_bar.float()
    assert torch.allclose(ours, sched.alphas_cumprod, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"clip_sample": True}, "clip_sample"),
        ({"thresholding": True}, "thresholding"),
        ({"beta_schedule": "scaled_linear"}, "beta_schedule"),
        ({"beta_start": 0.00085, "beta_end": 0.012}, "beta_start"),
        ({"num_train_timesteps": 500}, "num_train_timesteps"),
        ({"set_alpha_to_one": False}, "set_alpha_to_one"),
        ({"steps_offset": 1}, "steps_offset"),
        ({"timestep_spacing": "linspace"}, "timestep_spacing"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"_class_name": "DDPMScheduler", "variance_type": "fixed_small"}, "variance_type"),
        ({"_class_name": "EulerDiscreteScheduler"}, "EulerDiscreteScheduler"),
    ],
)
def test_unmappable_scheduler_settings_are_refused_in_one_line(settings, field) -> None:
    config = {"_class_name": "DDIMScheduler", "clip_sample": False, **settings}
    with pytest.raises(ImportRefused) as e:
        map_scheduler(config)
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_ddpm_scheduler_mapping_reproduces_ddpm_pipeline(spacing: str) -> None:
    """A mapped DDPMScheduler config: the project's ddpm sampler equals DDPMPipeline from the same seed."""
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(
        clip_sample=False, variance_type="fixed_large", timestep_spacing=spacing, prediction_type="v_prediction"
    )
    m = map_scheduler(dict(sched.config, _class_name="DDPMScheduler"))
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=4, output_type="pt")
    noise, gen = initial_noise((1, 8, 8), 2, 3)
    x = run_sampler(
        samplers.start("ddpm", m.objective, noise, 4, gen, spacing=m.spacing),
        lambda x, t, y: unet(x, t).sample,
        torch.zeros(2, dtype=torch.long),
    )
    ours = (x / 2 + 0.5).clamp(0, 1)
    assert ((ours > 0) & (ours < 1)).float().mean() > 0.3  # most values unclipped: the comparison means something
    assert (ours - ref.images).abs().max() < 1e-4


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_fm(tmp_path_factory.mktemp("onnx") / "tiny.onnx", TinyFMNet())


def test_onnx_import_runs_like_the_torch_net(tiny_onnx: Path, tmp_path: Path) -> None:
    ckpt = import_onnx(tiny_onnx, _write(tmp_path, FM_SPEC), tmp_path / "out")
    assert ckpt.name == "tiny-fm" and not ckpt.has_torch_weights
    assert ckpt.objective.kind == "fm" and ckpt.data_shape == (3,) and ckpt.null_label == 2
    backend = load_backend("onnxruntime", ckpt, num_threads=1)
    x, t, y = torch.randn(5, 3), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])
    assert (backend(x, t, y) - TinyFMNet()(x, t, y)).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s.replace("objective: fm\n", ""), "objective"),
        (lambda s: s.replace("objective: fm", "objective: sde"), "objective"),
        (lambda s: s.replace("path: linear\n", ""), "path"),
        (lambda s: s.replace("shape: [3]\n", ""), "shape"),
        (lambda s: s.replace("shape: [3]", "shape: [0]"), "shape"),
        (lambda s: s.replace("num_classes: 2\n", ""), "num_classes"),
        (lambda s: s.replace("num_classes: 2", "num_classes: -1"), "num_classes"),
        (lambda s: s.replace("std: [2.0]", "std: [0.0]"), "normalization.std"),
        (lambda s: s.replace("mean: [1.0, 2.0, 3.0]", "mean: [1.0, 2.0]"), "normalization.mean"),
        (lambda s: s + "target: eps\n", "target"),
        (lambda s: s + "clip: [1, 0]\n", "clip"),
    ],
)
def test_bad_spec_is_a_one_line_cli_error_naming_the_field(
    edit, field, tiny_onnx: Path, tmp_path: Path, capsys
) -> None:
    spec = _write(tmp_path, edit(FM_SPEC))
    rc = main(["import", "onnx", "--onnx", str(tiny_onnx), "--spec", str(spec), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err
    assert f"field '{field}'" in err
    assert not (tmp_path / "o").exists()


def test_onnx_without_the_x_t_y_contract_is_refused(tmp_path: Path, capsys) -> None:
    class TwoInputs(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x * t[:, None]

    import onnx

    path = tmp_path / "two.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        TwoInputs().eval(),
        (torch.zeros(3, 3), torch.ones(3)),
        dynamo=True,
        input_names=["x", "t"],
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    onnx.save_model(program.model_proto, path)
    rc = main(
        ["import", "onnx", "--onnx", str(path), "--spec", str(_write(tmp_path, FM_SPEC)), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "graph inputs are ['x', 't'], expected ['x', 't', 'y']" in err


def test_onnx_only_checkpoint_refuses_the_torch_backend(tiny_onnx: Path, tmp_path: Path) -> None:
    ckpt = import_onnx(tiny_onnx, _write(tmp_path, FM_SPEC), tmp_path / "out")
    with pytest.raises(CheckpointError, match="no torch weights.*backend 'onnxruntime'"):
        load_backend("torch", ckpt)
    args = {"models": {"tiny-fm": {"path": str(ckpt.path), "backend": "torch"}}}
    with pytest.raises(ValueError, match="backend 'torch' needs torch weights.*use backend 'onnxruntime'"):
        assemble(args)


def test_cli_without_diffusers_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "from export.__main__ import main\n"
        f"sys.exit(main(['import', 'diffusers', '--model', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: importing a diffusers model needs diffusers, the `import` extra: pip install 'stepserve[import]'"
    ]
