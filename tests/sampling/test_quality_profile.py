"""The quality profile: its file in the checkpoint (hash, weights hash, refusal of stale or tampered files), the
`python -m serving profile` command, and the committed models' profiles against independent recomputation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sampling.driver import sample
from sampling.measure_quality import DEFAULT_SAMPLES, profile_grid
from sampling.quality_profile import (
    QUALITY_FILE,
    QualityPoint,
    QualityProfile,
    load_quality_profile,
    write_quality_profile,
)
from sampling.request import Limits, SampleSpec, max_steps, to_data_space
from sampling.samplers import SAMPLERS, samplers_for
from serving.__main__ import main as serving_main
from tests.conftest import DEFAULT_MODELS, ROOT
from training.checkpoint import CheckpointError, add_file, load_checkpoint, sha256_file
from training.metrics import sw_ratio


def _copy(tmp_path: Path, name: str = "moons-fm-vp") -> Path:
    """A private copy of a committed checkpoint (weights and manifest only)."""
    d = tmp_path / name
    d.mkdir()
    for f in ("manifest.json", "weights.safetensors", "ema.safetensors"):
        shutil.copy(ROOT / "models" / name / f, d / f)
    return d


def _profile(sha: str) -> QualityProfile:
    points = (QualityPoint("fm-euler", 5, 5, 2.5, 0.4), QualityPoint("fm-euler", 1, 1, 10.0, 0.1))
    points += (QualityPoint("fm-rk4", 2, 8, 1.25, 0.8),)
    return QualityProfile("sw_ratio", "quality = min(1, 1 / value)", sha, points)


def test_profile_round_trips_and_sorts_by_steps() -> None:
    p = _profile("ab" * 32)
    again = QualityProfile.from_json(json.loads(json.dumps(p.to_json())))
    assert again == p
    assert [q.steps for q in p.for_sampler("fm-euler")] == [1, 5]
    assert p.samplers() == ["fm-euler", "fm-rk4"] and p.for_sampler("ddim") == []
    with pytest.raises(ValueError):
        QualityPoint.from_json({**p.points[0].to_json(), "quality": 1.5})


def test_profile_in_checkpoint_is_hashed_and_refused_when_stale_or_tampered(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    assert load_quality_profile(d) is None  # no profile recorded
    sha = load_checkpoint(d).manifest["files"]["ema.safetensors"]["sha256"]
    write_quality_profile(d, _profile(sha))
    entry = json.loads((d / "manifest.json").read_text())["files"][QUALITY_FILE]
    assert entry["role"] == "quality" and entry["sha256"] == sha256_file(d / QUALITY_FILE)
    assert entry["weights_sha256"] == sha
    assert load_quality_profile(d) == _profile(sha)
    load_checkpoint(d)  # the checkpoint with its profile still loads

    # Tampering with the profile file: caught by its recorded hash, here and when the checkpoint loads.
    original = (d / QUALITY_FILE).read_text()
    (d / QUALITY_FILE).write_text(original.replace('"quality": 0.1', '"quality": 0.9'))
    with pytest.raises(CheckpointError, match="sha256 mismatch for quality_profile.json"):
        load_quality_profile(d)
    with pytest.raises(CheckpointError, match="quality_profile.json"):
        load_checkpoint(d)
    (d / QUALITY_FILE).write_text(original)

    # New weights, properly recorded in the manifest: the profile measured on the old ones is stale.
    state = load_file(d / "ema.safetensors")
    first = next(iter(state))
    state[first] = state[first] + 0.01
    save_file(state, str(d / "ema.safetensors"))
    add_file(d, "ema.safetensors", "ema")
    load_checkpoint(d)
    with pytest.raises(CheckpointError, match="stale"):
        load_quality_profile(d)


def test_profile_cli_writes_a_profile_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = _copy(tmp_path)
    rc = serving_main(["profile", "--checkpoint", str(d), "--samples", "300", "--steps", "1,4,2000", "--no-progress"])
    assert rc == 0
    profile = load_quality_profile(d)
    fixed = [s for s in samplers_for(load_checkpoint(d).objective) if not SAMPLERS[s].adaptive]
    assert profile.samplers() == fixed and "fm-dopri5" not in profile.samplers()
    assert {p.steps for p in profile.points} == {1, 4}  # 2000 > max_steps 1000: skipped
    for p in profile.points:
        assert p.nfe == SAMPLERS[p.sampler].nfe(p.steps)
        assert p.quality == pytest.approx(min(1.0, 1.0 / p.value), abs=1e-3)
    assert "sd of quality" in profile.definition and "300 unconditional samples" in profile.definition
    assert "wrote" in capsys.readouterr().out


def test_profile_add_measures_one_sampler_into_the_current_profile(tmp_path: Path, capsys) -> None:
    """--add re-measures only the named sampler: its points equal a whole profile's (the same seed and samples),
    the others and the noise are kept; a profile of other settings or an unknown sampler is refused in a line."""
    d = _copy(tmp_path)
    args = ["profile", "--checkpoint", str(d), "--samples", "300", "--steps", "1,4", "--no-progress"]
    assert serving_main(args) == 0
    whole = load_quality_profile(d)
    assert serving_main([*args, "--add", "fm-unipc"]) == 0
    added = load_quality_profile(d)
    assert added.definition == whole.definition and added.samplers() == whole.samplers()
    assert sorted(added.points, key=str) == sorted(whole.points, key=str)
    capsys.readouterr()
    for extra in (["--add", "ddim"], ["--add", "fm-unipc", "--seed", "3"]):
        assert serving_main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --add") and err.count("\n") == 1, err


def test_profile_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert serving_main(["profile", "--checkpoint", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not found" in err


def test_ddpm_grid_is_capped_at_each_samplers_max_steps() -> None:
    ckpt = load_checkpoint(ROOT / "models" / "moons-ddpm")
    grid = profile_grid(ckpt, (1, 500, 999, 1000), max_nfe=None)
    assert grid["ddpm"] == [1, 500, 999, 1000] and grid["dpm-solver++"] == [1, 500, 999]  # needs K + 1 timesteps
    assert all(k <= max_steps(ckpt.objective, Limits(), s) for s, ks in grid.items() for k in ks)
    # the default NFE cap: heun spends 2 evaluations a step (1 the last), so K = 50 is 99 NFE and K = 100 is 199
    assert profile_grid(ckpt, (50, 100))["heun"] == [50] and profile_grid(ckpt, (50, 100))["ddim"] == [50, 100]


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_committed_models_carry_a_current_profile(name: str) -> None:
    d = ROOT / "models" / name
    profile = load_quality_profile(d)  # verifies the file's hash and that it belongs to these weights
    assert profile is not None, f"run `python -m serving profile --checkpoint models/{name}` and commit it"
    ckpt = load_checkpoint(d)
    assert profile.samplers() == [s for s in samplers_for(ckpt.objective) if not SAMPLERS[s].adaptive]
    assert all(0.0 <= p.quality <= 1.0 for p in profile.points)
    assert profile.metric == ("sw_ratio" if ckpt.data_kind == "moons" else "frechet_ratio")


def _noise_sd(profile: QualityProfile) -> float:
    match = re.search(r"sd of quality ([0-9.]+)", profile.definition)
    assert match, profile.definition
    return float(match.group(1))


def test_moons_fm_euler_quality_rises_with_k_within_the_measured_noise() -> None:
    profile = load_quality_profile(ROOT / "models" / "moons-fm")
    q = [p.quality for p in profile.for_sampler("fm-euler")]
    tol = 2 * _noise_sd(profile)
    assert q[-1] > q[0] + tol  # K = 1 is far worse than the largest K
    assert all(later >= earlier - tol for i, earlier in enumerate(q) for later in q[i + 1 :]), q


def test_moons_fm_profile_point_equals_a_direct_recomputation() -> None:
    """fm-euler K = 5 drawn again through the driver with the profile's seed and sample count, scored with
    training.metrics directly."""
    d = ROOT / "models" / "moons-fm"
    point = next(p for p in load_quality_profile(d).for_sampler("fm-euler") if p.steps == 5)
    ckpt = load_checkpoint(d)
    n = DEFAULT_SAMPLES["moons"]
    with torch.inference_mode():
        x = to_data_space(ckpt, sample(ckpt, ckpt.net("ema"), SampleSpec("fm-euler", 5, n, seed=0)))
    value = sw_ratio(x, seed=0, n=n)
    assert point.value == pytest.approx(value, abs=1e-4)
    assert point.quality == pytest.approx(min(1.0, 1 / value), abs=1e-4)
    assert np.isfinite(value) and value > 1.0  # five Euler steps are visibly off the data
