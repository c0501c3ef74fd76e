"""The choices of a `steps: "auto"` request: one validated `SampleSpec` per point of the model's quality
profile that its sampler, the model's limits and `min_quality` allow (`serving.policy.step_budget.choose`
picks among them on the replica)."""

from __future__ import annotations

from sampling.quality_profile import QualityProfile
from sampling.request import InvalidRequest, validate
from serving.api.schemas import ApiError, ModelInfo, SampleRequest
from serving.policy.step_budget import Candidate
from training.paths import Objective


def candidates(
    req: SampleRequest, info: ModelInfo, objective: Objective, profile: QualityProfile | None, seed: int
) -> list[Candidate]:
    """Every profiled (sampler, K) this request may run: validated, within min_quality. An ApiError naming
    the field when there is none (no profile, an unprofiled sampler, nothing within the limits or the floor)."""
    if profile is None:
        raise ApiError(
            "steps",
            f'steps "auto" needs a quality profile and {req.model} has none '
            "(python -m serving profile --checkpoint DIR makes one); give steps explicitly",
        )
    if req.sampler != "auto" and req.sampler not in profile.samplers():
        raise ApiError(
            "sampler",
            f"sampler {req.sampler[:64]!r} has no quality profile for {req.model}; "
            f'profiled: {profile.samplers()} (or "auto")',
        )
    names = profile.samplers() if req.sampler == "auto" else [req.sampler]
    floor = req.min_quality if req.min_quality is not None else 0.0
    out: list[Candidate] = []
    best: tuple[float, str, int] | None = None
    for name in names:
        for point in profile.for_sampler(name):
            spec = req.to_spec(seed, name, point.steps)
            try:
                validate(spec, objective, info.num_classes, info.limits)
            except InvalidRequest as e:
                if e.field == "steps":  # over max_steps or the work cap: not a choice for this request
                    continue
                raise ApiError(e.field, e.message) from None
            if best is None or point.quality > best[0]:
                best = (point.quality, name, point.steps)
            if point.quality >= floor:
                out.append(Candidate(spec, point.quality))
    if best is None:
        raise ApiError("steps", "no profiled step budget fits this model's limits for this request")
    if not out:
        raise ApiError(
            "min_quality",
            f"no profiled choice reaches min_quality {floor:g}; the best allowed is {best[0]:.3f} "
            f"({best[1]}, steps {best[2]})",
        )
    return out
