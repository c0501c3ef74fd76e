"""A replica engine's policy, apart from the loop that carries it out (`serving.engine`).

- `state`: `RequestState`, the one record of a request in the engine, and `Load`, a snapshot of them all.
- `limits`: the knobs (`Policy` for tick planning, inside `EngineLimits` for admission).
- `tick_model`: the latency model, tick seconds as a function of rows, profiled at start-up, refitted online.
- `tick_plan`: which rows run in a tick (EDF under a per-tick row budget, the throughput guard, the express
  lane) and `finish_s`, the same policy's estimate of a new request's finish.
- `admission`: a new request's `Prediction` under a `Load` (made once), and whether the engine takes it.
- `step_budget`: choosing (sampler, K) for a deadline request with `steps: "auto"`, and `Calibration`.

Everything here is a function of its arguments (a snapshot, the model, the knobs, the time), so it is tested
on a fake clock without a net.
"""
