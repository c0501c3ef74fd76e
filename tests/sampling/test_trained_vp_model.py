"""The committed VP flow-matching moons model samples with every FM sampler (the samplers stop at its t_end)."""

import pytest
import torch

from sampling.driver import sample
from sampling.request import OFFLINE_LIMITS, SampleSpec, to_data_space, validate
from tests.conftest import ROOT
from training.checkpoint import load_checkpoint
from training.metrics import sw_ratio


@pytest.mark.parametrize(
    "sampler, steps, options",
    [("fm-euler", 20, {}), ("fm-heun", 10, {}), ("fm-rk4", 10, {}), ("fm-dopri5", 10, {"rtol": 1e-4, "atol": 1e-4})],
)
def test_vp_fm_model_samples_the_moons(sampler, steps, options):
    ckpt = load_checkpoint(ROOT / "models" / "moons-fm-vp")
    assert ckpt.manifest["objective"] == {"kind": "fm", "path": "vp"}
    spec = SampleSpec(sampler, steps, 2000, seed=1, **options)
    validate(spec, ckpt.objective, ckpt.num_classes, OFFLINE_LIMITS)
    with torch.inference_mode():
        x = to_data_space(ckpt, sample(ckpt, ckpt.net("ema"), spec))
    # A draw of the data scores 1.0; the linear-path moons-fm model scores 1.0-1.3 at these K.
    assert sw_ratio(x) < 1.3
