"""diffusers scheduler configs mapped onto the project's DDPM objective and samplers: exactly, or refused.

What maps (T = 1000 training timesteps, the project's only T):

    beta_schedule "linear" with beta_start 1e-4, beta_end 0.02   -> schedule "linear"
    beta_schedule "squaredcos_cap_v2" (s = 0.008, beta <= 0.999)  -> schedule "cosine"
    prediction_type "epsilon" / "v_prediction" / "sample"         -> target "eps" / "v" / "x0"
    timestep_spacing "leading" (steps_offset 0), "trailing"       -> the same spacing, the model's default
    DDIMScheduler: set_alpha_to_one true (the last step lands on clean data, as the project's ddim does)
    DDPMScheduler: variance_type "fixed_large" (the project's ddpm uses sigma^2 = beta_{t->s})

Everything else is refused with one line naming the setting: other schedules or betas, trained_betas,
rescale_betas_zero_snr, clip_sample, thresholding, steps_offset with leading spacing, set_alpha_to_one
false, DDIM with linspace spacing (diffusers' DDIM steps by T // K from each timestep, not to the next
listed one as the project's samplers do), DDPM with trailing spacing (diffusers adds noise on its last step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.paths import NUM_TRAIN_TIMESTEPS, DDPMObjective

SCHEDULER_CLASSES = ("DDIMScheduler", "DDPMScheduler")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
LINEAR_BETAS = (1e-4, 0.02)
# diffusers' __init__ defaults of both classes, for configs that leave a key out.
DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
    "variance_type": "fixed_small",
}


class ImportRefused(ValueError):
    """A net or setting that cannot be mapped exactly onto the project; the message is one line."""


@dataclass(frozen=True)
class SchedulerMapping:
    """The project's objective and default spacing for a diffusers scheduler config."""

    objective: DDPMObjective
    spacing: str
    scheduler_class: str


def _refuse(field: str, value: Any, why: str) -> ImportRefused:
    return ImportRefused(f"scheduler {field}={value!r}: {why}")


def _schedule(cfg: dict[str, Any]) -> str:
    name = cfg["beta_schedule"]
    if cfg["trained_betas"] is not None:
        raise _refuse("trained_betas", "[...]", "explicit betas are not one of the project's schedules")
    if cfg["rescale_betas_zero_snr"]:
        raise _refuse("rescale_betas_zero_snr", True, "zero-terminal-SNR betas are not one of the project's schedules")
    if name == "linear":
        betas = (float(cfg["beta_start"]), float(cfg["beta_end"]))
        if betas != LINEAR_BETAS:
            raise _refuse("beta_start, beta_end", betas, f"the project's linear schedule is {LINEAR_BETAS}")
        return "linear"
    if name == "squaredcos_cap_v2":
        return "cosine"
    raise _refuse("beta_schedule", name, "the project has linear (1e-4..0.02) and squaredcos_cap_v2 (cosine)")


def _spacing(cfg: dict[str, Any], cls: str) -> str:
    spacing = cfg["timestep_spacing"]
    if spacing == "leading":
        if int(cfg["steps_offset"]) != 0:
            raise _refuse("steps_offset", cfg["steps_offset"], "the project's leading spacing has no offset")
        return "leading"
    if spacing == "trailing":
        if cls == "DDPMScheduler":
            raise _refuse(
                "timestep_spacing", spacing, "DDPMScheduler adds noise on its last step, the project does not"
            )
        return "trailing"
    if spacing == "linspace":
        if cls == "DDIMScheduler":
            raise _refuse(
                "timestep_spacing",
                spacing,
                "DDIMScheduler steps by T // K from each linspace timestep; the project steps to the next one",
            )
        return "linspace"
    raise _refuse("timestep_spacing", spacing, "expected leading, trailing or linspace")


def map_scheduler(config: dict[str, Any]) -> SchedulerMapping:
    """The mapping of a DDIMScheduler / DDPMScheduler config (its `config` dict or scheduler_config.json)."""
    cls = config.get("_class_name", "DDIMScheduler")
    if cls not in SCHEDULER_CLASSES:
        raise ImportRefused(f"scheduler class {cls!r}: only {' and '.join(SCHEDULER_CLASSES)} map onto the project")
    cfg = {**DEFAULTS, **config}
    if int(cfg["num_train_timesteps"]) != NUM_TRAIN_TIMESTEPS:
        raise _refuse("num_train_timesteps", cfg["num_train_timesteps"], f"the project's T is {NUM_TRAIN_TIMESTEPS}")
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise _refuse("prediction_type", cfg["prediction_type"], f"expected one of {list(PREDICTION_TYPES)}")
    if cfg["clip_sample"]:
        raise _refuse("clip_sample", True, "the project's samplers never clip x0 (set clip_sample false)")
    if cfg["thresholding"]:
        raise _refuse("thresholding", True, "the project's samplers have no dynamic thresholding")
    if cls == "DDIMScheduler" and not cfg["set_alpha_to_one"]:
        raise _refuse("set_alpha_to_one", False, "the project's ddim always ends on clean data (alpha_bar 1)")
    if cls == "DDPMScheduler" and cfg["variance_type"] != "fixed_large":
        raise _refuse("variance_type", cfg["variance_type"], "the project's ddpm uses sigma^2 = beta ('fixed_large')")
    objective = DDPMObjective(schedule_name=_schedule(cfg), target=PREDICTION_TYPES[cfg["prediction_type"]])
    return SchedulerMapping(objective, _spacing(cfg, cls), cls)
