"""The decode stage of a latent model: the decoder batched against one request at a time, and its share of a
request's latency, in this process (no HTTP).

    python -m bench.latent [--model shapes-latent-fm] [--quick] [--out DIR]

1. Decoder throughput: the checkpoint's decoder (torch, and onnxruntime from its export) at several batch sizes,
   rows per second, medians of interleaved rounds (every size in turn each round, so a drift of the machine
   moves all alike).
2. Batched against one at a time: R requests of S samples finishing together, decoded in one call of R x S rows,
   in pieces of the chunk a replica picks (serving.engine.best_decode_chunk: what the decode stage does), and in
   R calls of S rows, side by side in the same rounds.
3. Share of latency: lone requests through the engine (the real backend and decode stage) at several K, and the
   decoder's part of each (a decode of the request's rows, timed alone, over the request's median time), beside
   what the engine's decode model predicted for it.
4. Previews: the checkpoint's preview map (training/preview.py, what streamed previews use) against the decoder
   on the latents of a fresh draw of the data (PSNR against the decoder's images and against the images
   themselves; a 1 x 1 map refitted beside it), and its time against the decoder's at several batch sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, median_times, scratch_checkpoint
from sampling.request import SampleSpec, decoder_of, prepare
from serving.backends import load_backend
from serving.engine import Engine, EngineLimits, profile_decode
from serving.policy.tick_model import TickModel, profile_tick_times
from training.checkpoint import load_checkpoint

MODEL = "shapes-latent-fm"


def decoder_throughput(ckpt, runtime: str, sizes: tuple[int, ...], rounds: int) -> list[dict[str, Any]]:
    decode = decoder_of(ckpt, runtime, num_threads=torch.get_num_threads())
    inputs = {b: torch.randn(b, *ckpt.data_shape) for b in sizes}
    med = median_times({str(b): (lambda b=b: decode(inputs[b])) for b in sizes}, rounds)
    return [{"rows": b, "median_s": med[str(b)], "rows_per_s": b / med[str(b)]} for b in sizes]


def decode_chunk(ckpt) -> int:
    """The chunk a replica would decode in (serving.engine.profile_decode, its start-up profile)."""
    return profile_decode(decoder_of(ckpt, "torch"), ckpt.data_shape, ckpt.null_label)[0]


def batched_against_one_at_a_time(ckpt, requests: int, samples: int, rounds: int, chunk: int) -> dict[str, Any]:
    """R requests of S samples: one decoder call of every row, the engine's decode (one batch in pieces of
    `chunk` rows), and one call per request, side by side."""
    decode = decoder_of(ckpt, "torch")
    parts = [torch.randn(samples, *ckpt.data_shape) for _ in range(requests)]

    def batched() -> None:
        decode(torch.cat(parts))

    def in_chunks() -> None:
        rows = torch.cat(parts)
        for i in range(0, len(rows), chunk):
            decode(rows[i : i + chunk])

    def one_at_a_time() -> None:
        for p in parts:
            decode(p)

    fns = {"batched": batched, "in_chunks": in_chunks, "one_at_a_time": one_at_a_time}
    med = median_times(fns, rounds)
    together = decode(torch.cat(parts))
    apart = torch.cat([decode(p) for p in parts])
    return {
        "max_abs_diff": float((together - apart).abs().max()),  # a sample's image does not depend on its batch
        "requests": requests,
        "samples_per_request": samples,
        "batched_s": med["batched"],
        "in_chunks_s": med["in_chunks"],
        "chunk": chunk,
        "one_at_a_time_s": med["one_at_a_time"],
        "speedup": med["one_at_a_time"] / med["batched"],
        "speedup_in_chunks": med["one_at_a_time"] / med["in_chunks"],
    }


def latency_share(ckpt, ks: tuple[int, ...], samples: int, repeats: int) -> list[dict[str, Any]]:
    """Lone requests through the engine with the torch backend and the decode stage."""
    backend = load_backend("torch", ckpt, weights="ema")
    decode = decoder_of(ckpt, "torch")
    chunk, decode_model = profile_decode(decode, ckpt.data_shape, ckpt.null_label)  # as a replica does
    tick_model = TickModel(profile_tick_times(backend, ckpt.data_shape, ckpt.null_label, (1, 64, 256)))
    out = []

    async def run() -> None:
        limits = EngineLimits.from_options()
        engine = Engine(
            backend,
            ckpt.null_label,
            limits,
            None,
            tick_model,
            decode=decode,
            decode_model=decode_model,
            decode_chunk=chunk,
        )
        for k in ks:
            totals = []
            for r in range(repeats):
                spec = SampleSpec("fm-euler", k, samples, seed=r)
                job = prepare(ckpt, spec)
                res = await engine.submit(job.sampler, job.labels, None, spec.evaluations)
                totals.append(res.queue_s + res.compute_s)
            total = statistics.median(totals)
            rows = torch.randn(samples, *ckpt.data_shape)
            dec = median_times({"decode": lambda rows=rows: decode(rows)}, max(3, repeats))["decode"]
            out.append(
                {
                    "steps": k,
                    "samples": samples,
                    "median_s": total,
                    "decode_s": dec,
                    "decode_share": dec / total,
                    "predicted_decode_s": engine.decode_model.tick_s(samples),
                }
            )
        await engine.close()

    asyncio.run(run())
    return out


def preview_against_decoder(ckpt, sizes: tuple[int, ...], rounds: int, n: int = 1000) -> dict[str, Any]:
    """The preview map's PSNR against the decoder and the data on n fresh latents (drawn with another seed than
    the map's fit), beside a 1 x 1 map fitted on the first 80 % of them, and its time against the decoder's."""
    from training.autoencoder import load_autoencoder
    from training.latents import encode
    from training.preview import apply_preview, measured_preview, psnr_db
    from training.shapes import shapes_raw

    ae = load_autoencoder(Path(__file__).resolve().parents[1] / "models" / ckpt.latent["autoencoder"]["name"])
    x, _ = shapes_raw(n, seed=9999)
    images = torch.as_tensor(x).float() * 2 - 1
    z = encode(ae.vae(), images)
    state, decoder = ckpt.preview_map(), ckpt.decoder()
    with torch.inference_mode():
        decoded, previewed = decoder(z), apply_preview(state, z)
        _, psnr_1x1 = measured_preview(decoder, z, kernel=1)
        inputs = {b: z[:b] for b in sizes}
        fns = {f"decoder {b}": (lambda b=b: decoder(inputs[b])) for b in sizes}
        fns |= {f"preview {b}": (lambda b=b: apply_preview(state, inputs[b])) for b in sizes}
        med = median_times(fns, rounds)
    return {
        "latents": n,
        "kernel": ckpt.latent["preview"]["kernel"],
        "psnr_db_vs_decoder": psnr_db(previewed, decoded),
        "psnr_db_vs_decoder_recorded": ckpt.latent["preview"]["psnr_db_vs_decoder"],
        "psnr_db_vs_decoder_1x1": psnr_1x1,
        "psnr_db_vs_data": psnr_db(previewed, images),
        "decoder_psnr_db_vs_data": psnr_db(decoded, images),
        "times": [
            {
                "rows": b,
                "decoder_s": med[f"decoder {b}"],
                "preview_s": med[f"preview {b}"],
                "speedup": med[f"decoder {b}"] / med[f"preview {b}"],
            }
            for b in sizes
        ],
    }


def run(out: Path, quick: bool = False, model: str = MODEL) -> dict[str, Any]:
    rounds = 5 if quick else 15
    with tempfile.TemporaryDirectory() as tmp:
        path = scratch_checkpoint(model, Path(tmp), onnx=True)
        ckpt = load_checkpoint(path)
        if not ckpt.latent:
            raise ValueError(f"{model} is not a latent model")
        sizes = (1, 16, 64, 256)
        chunk = decode_chunk(ckpt)
        result = {
            "machine": machine(),
            "model": model,
            "trained": (Path(__file__).resolve().parents[1] / "models" / model / "manifest.json").is_file(),
            "decoder_params": sum(p.numel() for p in ckpt.decoder().parameters()),
            "throughput": {rt: decoder_throughput(ckpt, rt, sizes, rounds) for rt in ("torch", "onnxruntime")},
            "decode_chunk": chunk,
            "batched": [
                batched_against_one_at_a_time(ckpt, r, s, rounds, chunk) for r, s in ((16, 1), (16, 16), (4, 64))
            ],
            "latency_share": latency_share(ckpt, (5, 20, 50), 16, 3 if quick else 7),
            "preview": preview_against_decoder(ckpt, sizes, rounds) if ckpt.preview_map() is not None else None,
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "latent.json").write_text(json.dumps(result, indent=2))
    for row in result["batched"]:
        what = f"decode {row['requests']} x {row['samples_per_request']} samples"
        print(
            f"{what}: one call {row['batched_s'] * 1e3:.1f} ms, "
            f"in chunks of {chunk} {row['in_chunks_s'] * 1e3:.1f} ms, "
            f"one at a time {row['one_at_a_time_s'] * 1e3:.1f} ms ({row['speedup_in_chunks']:.2f}x in chunks)"
        )
    for row in result["latency_share"]:
        what = f"K={row['steps']} x {row['samples']} samples"
        print(f"{what}: {row['median_s'] * 1e3:.1f} ms, decode {row['decode_share']:.0%}")
    if (pv := result["preview"]) is not None:
        print(
            f"preview map ({pv['kernel']}x{pv['kernel']}): {pv['psnr_db_vs_decoder']:.1f} dB from the decoder "
            f"(1x1: {pv['psnr_db_vs_decoder_1x1']:.1f} dB), {pv['psnr_db_vs_data']:.1f} dB from the data "
            f"(decoder: {pv['decoder_psnr_db_vs_data']:.1f} dB); "
            + ", ".join(f"{t['rows']} rows {t['speedup']:.0f}x faster" for t in pv["times"])
        )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latent", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=MODEL, help=f"a latent model in models/ (default {MODEL})")
    p.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    args = p.parse_args(argv)
    try:
        run(Path(args.out), args.quick, args.model)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
