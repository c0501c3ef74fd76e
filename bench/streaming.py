"""Streaming and the playground: what a streamed request costs against the same request unstreamed, and how
long the playground takes from a click to drawn samples.

    python -m bench.streaming [--out DIR] [--quick]      (also `python -m bench --only streaming`)

1. Streaming overhead: a K = 50 fm-euler request (moons-fm, 64 samples, previews every 5 steps), streamed
   (all its server-sent events read) and unstreamed, interleaved A B A B on one replica; the ratio of the
   p50 latencies, client-side wall time from sending to the last byte.
2. Playground click-to-draw: in Debian's headless Chromium, the page's "Sample" button for a K = 10 moons-fm
   request (256 samples); the page records performance.now() from the click to the samples drawn on its
   canvas (`window.playground.clickToDrawMs`); median of the repeats. Needs `make browser`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.browser import headless_chromium, missing
from bench.common import ROOT, local_serve, machine

MODEL = "moons-fm"
REPLICA = {"ray_actor_options": {"num_cpus": 1}}


def timed_ms(client: httpx.Client, body: dict[str, Any]) -> float:
    """Wall time of one request until its last byte (every event of a stream), in ms."""
    t0 = time.perf_counter()
    with client.stream("POST", "/v1/samples", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {resp.read()[:300]!r}")
        for _ in resp.iter_bytes():
            pass
    return 1e3 * (time.perf_counter() - t0)


def streaming_overhead(url: str, repeats: int) -> dict[str, Any]:
    body = {"model": MODEL, "sampler": "fm-euler", "steps": 50, "num_samples": 64, "seed": 0}
    streamed_body = {**body, "stream": True, "preview_every": 5}
    plain, streamed = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(3):  # warm-up: both paths, both handles
            timed_ms(client, body), timed_ms(client, streamed_body)
        for _ in range(repeats):
            plain.append(timed_ms(client, body))
            streamed.append(timed_ms(client, streamed_body))
    return {
        "request": body,
        "streamed_extra": {"stream": True, "preview_every": 5},
        "repeats": repeats,
        "plain_ms": plain,
        "streamed_ms": streamed,
        "plain_p50_ms": statistics.median(plain),
        "streamed_p50_ms": statistics.median(streamed),
        "streamed_over_plain": statistics.median(streamed) / statistics.median(plain),
    }


def click_to_draw(url: str, repeats: int) -> dict[str, Any]:
    why = missing()
    if why is not None:
        return {"skipped": why}
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = headless_chromium()
    try:
        driver.get(f"{url}/")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        Select(driver.find_element("id", "model")).select_by_value(MODEL)
        Select(driver.find_element("id", "sampler")).select_by_value("fm-euler")
        for name, value in (("steps", "10"), ("seed", "0")):
            driver.find_element("id", name).clear()
            driver.find_element("id", name).send_keys(value)
        times = []
        for i in range(repeats + 1):  # the first click warms the page and the connection
            driver.execute_script("window.playground.clickToDrawMs = null")
            driver.find_element("id", "run").click()
            ms = WebDriverWait(driver, 60, poll_frequency=0.05).until(
                lambda d: d.execute_script("return window.playground.clickToDrawMs")
            )
            if i:
                times.append(float(ms))
        samples = int(driver.find_element("id", "main").get_attribute("data-drawn"))
    finally:
        driver.quit()
    return {
        "request": {"model": MODEL, "sampler": "fm-euler", "steps": 10, "num_samples": samples},
        "repeats": repeats,
        "click_to_draw_ms": times,
        "click_to_draw_p50_ms": statistics.median(times),
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    from serving.app import build_app

    repeats = 9 if quick else 25
    result: dict[str, Any] = {"machine": machine(), "quick": quick, "model": MODEL}
    args = {
        "models": {MODEL: {"path": str(ROOT / "models" / MODEL)}},
        "deployment_options": {MODEL: REPLICA, "Ingress": {"ray_actor_options": {"num_cpus": 0.5}}},
    }
    with local_serve() as base:
        from ray import serve

        serve.run(build_app(args), name="streaming", route_prefix="/streaming")
        url = f"{base}/streaming"
        result["overhead"] = streaming_overhead(url, repeats)
        result["playground"] = click_to_draw(url, 5 if quick else 9)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streaming", description="streaming and playground benchmarks")
    p.add_argument("--out", default="bench-results", help="directory for streaming.json")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    args = p.parse_args(argv)
    res = run(Path(args.out), args.quick)
    o, pg = res["overhead"], res["playground"]
    summary = {
        "k50_plain_p50_ms": round(o["plain_p50_ms"], 1),
        "k50_streamed_p50_ms": round(o["streamed_p50_ms"], 1),
        "streamed_over_plain": round(o["streamed_over_plain"], 3),
        "playground_click_to_draw_p50_ms": pg.get("click_to_draw_p50_ms", pg.get("skipped")),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
