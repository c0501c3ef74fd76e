import json

import pytest
import torch

from tests.conftest import ROOT
from training.checkpoint import CheckpointError, add_file, load_checkpoint, load_train_state, read_manifest
from training.config import config_from_dict, load_config
from training.trainer import train


def test_round_trip_restores_identical_weights_and_metadata(tiny_checkpoints, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoints["digits-ddpm"])
    m = ckpt.manifest
    assert m["format_version"] == 1 and m["objective"] == {
        "kind": "ddpm",
        "schedule": "cosine",
        "target": "v",
    }
    assert ckpt.data_shape == (1, 8, 8) and ckpt.num_classes == 10 and ckpt.null_label == 10
    assert m["training"]["steps"] == 20 and m["training"]["ema_decay"] == 0.999
    raw, ema = ckpt.net("raw"), ckpt.net("ema")
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), ema.parameters(), strict=True))
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 500.0, 999.0]), torch.tensor([0, 10, 3])
    assert torch.equal(load_checkpoint(ckpt.path).net("ema")(x, t, y), ema(x, t, y))


def test_training_is_reproducible_and_resumable(tmp_path):
    cfg = load_config(ROOT / "configs" / "moons-fm.yaml")
    a = train(cfg, tmp_path / "a", max_steps=30, progress=False)
    b = train(cfg, tmp_path / "b", max_steps=30, progress=False)
    wa = load_checkpoint(a).net("raw").state_dict()
    wb = load_checkpoint(b).net("raw").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # 15 steps, then resume to 30, equals 30 straight steps
    from dataclasses import replace

    half = replace(cfg, train=replace(cfg.train, steps=15))
    train(half, tmp_path / "c", progress=False)
    full = replace(cfg, train=replace(cfg.train, steps=30))
    c = train(full, tmp_path / "c", resume=True, progress=False)
    wc = load_checkpoint(c).net("raw").state_dict()
    assert load_checkpoint(c).manifest["training"]["steps"] == 30
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)
    assert "rng" in load_train_state(load_checkpoint(c))


def test_a_flipped_byte_in_a_weight_file_is_refused(tiny_checkpoints, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints["moons-fm"], d)
    f = d / "ema.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch for ema.safetensors"):
        load_checkpoint(d)


def test_missing_file_unknown_version_and_missing_manifest_are_clear_errors(tiny_checkpoints, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints["moons-fm"], d)
    (d / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights.safetensors listed in the manifest is missing"):
        load_checkpoint(d)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="unknown checkpoint format_version 99"):
        read_manifest(d)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_added_files_are_hashed_and_checked(tiny_checkpoints, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints["moons-fm"], d)
    (d / "extra.bin").write_bytes(b"compiled")
    add_file(d, "extra.bin", "onnx", opset=23)
    ckpt = load_checkpoint(d)
    assert ckpt.files_with_role("onnx") == ["extra.bin"]
    assert ckpt.file("extra.bin").read_bytes() == b"compiled"
    (d / "extra.bin").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="extra.bin"):
        ckpt.file("extra.bin")


def test_no_pickle_anywhere_in_a_checkpoint(tiny_checkpoints):
    for f in tiny_checkpoints["digits-fm"].iterdir():
        assert f.suffix in {".json", ".safetensors"}, f


def test_unknown_config_keys_are_refused_with_their_name():
    base = {"name": "x", "net": {"kind": "mlp"}, "objective": {"kind": "fm"}}
    with pytest.raises(ValueError, match="learning_rate"):
        config_from_dict({**base, "train": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match="colour"):
        config_from_dict({**base, "colour": "red"})
    with pytest.raises(ValueError, match="size"):
        config_from_dict({**base, "data": {"kind": "moons", "size": 3}})
    cfg = config_from_dict({**base, "net": {"kind": "mlp", "width": 3}})
    with pytest.raises(ValueError, match="width"):
        train(cfg, "/tmp/never-written", max_steps=1, progress=False)


def test_a_configs_default_spacing_reaches_the_manifest_and_requests_that_name_none(tmp_path):
    from sampling.driver import sample
    from sampling.request import SampleSpec
    from sampling.samplers.spacing import SPACINGS
    from training.config import SPACINGS as CONFIG_SPACINGS

    assert CONFIG_SPACINGS == SPACINGS
    base = {"name": "x", "net": {"kind": "mlp", "hidden": 16, "depth": 2}, "objective": {"kind": "ddpm"}}
    with pytest.raises(ValueError, match="sampling.spacing.*'sideways'"):
        config_from_dict({**base, "sampling": {"spacing": "sideways"}})
    with pytest.raises(ValueError, match="eta"):
        config_from_dict({**base, "sampling": {"eta": 1.0}})
    plain = load_checkpoint(train(config_from_dict(base), tmp_path / "plain", max_steps=2, progress=False))
    cfg = config_from_dict({**base, "sampling": {"spacing": "leading"}})
    ckpt = load_checkpoint(train(cfg, tmp_path / "leading", max_steps=2, progress=False))
    assert "sampling" not in plain.manifest and plain.default_spacing is None
    assert ckpt.manifest["sampling"] == {"spacing": "leading"} and ckpt.default_spacing == "leading"
    net = ckpt.net("ema")
    with torch.inference_mode():
        got = {sp: sample(ckpt, net, SampleSpec("unipc", 5, 16, seed=1, spacing=sp)) for sp in (None, *SPACINGS)}
    assert torch.equal(got[None], got["leading"]) and not torch.equal(got[None], got["trailing"])
