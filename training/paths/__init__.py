"""Paths and objectives: DDPM schedules and targets, the FM linear path, and their losses."""

from training.paths.conversions import TARGETS, to_eps_x0
from training.paths.fm_paths import FM_PATHS, PathCoefficients, path_coefficients, velocity_to_data
from training.paths.noise_schedules import NUM_TRAIN_TIMESTEPS, SCHEDULES, DDPMSchedule
from training.paths.objectives import (
    DDPM_T_SCALE,
    FM_T_SCALE,
    DDPMObjective,
    FMObjective,
    Objective,
    objective_from_dict,
)

__all__ = [
    "DDPM_T_SCALE",
    "FM_PATHS",
    "FM_T_SCALE",
    "NUM_TRAIN_TIMESTEPS",
    "SCHEDULES",
    "TARGETS",
    "DDPMObjective",
    "DDPMSchedule",
    "FMObjective",
    "Objective",
    "PathCoefficients",
    "objective_from_dict",
    "path_coefficients",
    "to_eps_x0",
    "velocity_to_data",
]
