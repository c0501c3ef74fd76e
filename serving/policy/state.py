"""One request in a replica's engine, and a snapshot of them all.

`RequestState` is the one record of a request in flight or waiting: the tick planner (`tick_plan`) and the
predictions (`admission`) read its scheduling fields, and the engine advances it (its sampler, the current
evaluation's rows, the outputs of those run so far). `Load` is what the predictions see of an engine at one
moment; the engine builds it (`Engine.load`) and nothing in the policy reads the engine itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the samplers only where the engine runs: the router imports this module too
    from torch import Tensor

    from sampling.samplers import Evaluation, SamplerGen


@dataclass(eq=False)
class RequestState:
    """One request in a replica's engine.

    What the policy reads: rows (of one evaluation; guided rows counted twice), planned (the net evaluations
    its sampler will ask for), deadline (absolute seconds on the engine's clock; None: the default class),
    seq (arrival order), evaluations (run so far), cursor (rows of the current evaluation already run),
    idle_ticks (ticks since it last advanced), size (rows x evaluations asked for, fixed for its life; 0:
    rows x planned), decode_s (predicted seconds of decoding its images once its sampler finishes: a latent
    model's decode stage; 0 without one). What the engine owns (unset in the policy's own tests): the sampler
    generator, labels, guidance, the future its caller awaits, when it was submitted and admitted, its latency
    predicted then, the current evaluation's rows (x, t, y; guided rows expanded) and the outputs of those run
    so far."""

    rows: int
    planned: int
    deadline: float | None = None
    seq: int = 0
    evaluations: int = 0
    cursor: int = 0
    idle_ticks: int = 0
    size: int = 0
    decode_s: float = 0.0
    gen: SamplerGen | None = None
    y: Tensor | None = None
    guidance: float | None = None
    future: asyncio.Future | None = None
    submitted: float = 0.0
    admitted: float = 0.0
    predicted_s: float = 0.0
    pending: tuple[Tensor, Tensor, Tensor] | None = None
    parts: list[Tensor] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        if not self.size:
            self.size = self.rows * self.planned

    @property
    def evals_left(self) -> int:
        """Evaluations left, the current one included (at least one while it is not done)."""
        return max(self.planned - self.evaluations, 1)

    @property
    def rows_now(self) -> int:
        """Rows still to run of the current evaluation."""
        return self.rows - self.cursor

    @property
    def work_left(self) -> int:
        """Rows x evaluations still to run."""
        return self.rows * self.evals_left - self.cursor

    def start(self, ev: Evaluation, null_label: int) -> None:
        """The sampler's next evaluation becomes the current one (guided rows: [cond; null label])."""
        from sampling.guidance import expand

        assert self.y is not None
        self.pending = expand(ev.x, ev.t, self.y, self.guidance is not None, null_label)
        self.parts = []
        self.cursor = 0

    def next_rows(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """The next `n` rows of the current evaluation (the tensors themselves when that is all of them)."""
        assert self.pending is not None
        x, t, y = self.pending
        c = self.cursor
        return (x[c : c + n], t[c : c + n], y[c : c + n]) if c or n < self.rows else self.pending

    def receive(self, out: Tensor) -> Tensor | None:
        """The net's output for the next rows; the prediction (guided rows combined) once the evaluation's
        rows have all run, else None."""
        self.parts.append(out)
        self.cursor += int(out.shape[0])
        if self.cursor < self.rows:
            return None
        import torch

        from sampling.guidance import combine

        pred = self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)
        return combine(pred, self.guidance)


@dataclass(frozen=True)
class Load:
    """An engine's load at one moment, what its predictions read: the requests in flight and waiting, the
    rows of the tick running now (0 when idle) and when it started, the throughput guard's recent
    efficiency (`tick_plan.Efficiency`), whether the express lane is on (`tick_plan.express`), and the seconds
    of decoding still due for requests whose samplers have finished (waiting for the decode stage or in it)."""

    in_flight: Sequence[RequestState] = ()
    queued: Sequence[RequestState] = ()
    running_rows: int = 0
    running_since: float = 0.0
    recent_efficiency: float = 1.0
    express_lane: bool = False
    decoding_s: float = 0.0

    @property
    def requests(self) -> list[RequestState]:
        return [*self.in_flight, *self.queued]
