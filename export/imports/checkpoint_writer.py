"""Write a servable checkpoint around an ONNX net made elsewhere: `net-ema.onnx` plus a manifest.

The checkpoint has no torch weights (asking for the torch backend fails with a message naming
onnxruntime); its one file is the graph, role "onnx", weights "ema", so the onnxruntime backend finds it
exactly as it finds the project's own exports. Before the manifest is written, the graph is run with
onnxruntime at two batch sizes to prove it has the contract of the project's exports:

    x: (batch, *shape) float32,  t: (batch,) float32,  y: (batch,) int64 in [0, num_classes]
    -> (batch, *shape) float32

A latent model (a DiT pipeline) also carries its decoder as `decoder.onnx` (role "decoder", the manifest's
`latent` section names it), checked the same way: z (batch, *shape) float32 -> (batch, *image_shape) float32.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.imports.diffusers_scheduler import ImportRefused
from export.onnx_export import DECODER_INPUT, DECODER_ONNX, INPUT_NAMES
from sampling.ort_session import cpu_session
from training.checkpoint import FORMAT_VERSION, MANIFEST, Checkpoint, load_checkpoint, sha256_file, write_preview
from training.data import Normalization
from training.paths import Objective
from training.preview import KERNEL, measured_preview, preview_manifest

PREVIEW_NOISE_LATENTS = 100  # an imported decoder's preview map: fitted on 80 standard-normal latents, 20 held out

ONNX_NAME = "net-ema.onnx"
INPUT_TYPES = ("tensor(float)", "tensor(float)", "tensor(int64)")
CHECK_BATCHES = (1, 3)


def check_contract(path: Path, shape: tuple[int, ...], null_label: int, t_max: float) -> None:
    """Run the graph at batch 1 and 3 on random inputs; refuse wrong input names, types or output shapes."""
    session = cpu_session(path, num_threads=1)
    inputs = session.get_inputs()
    names = tuple(i.name for i in inputs)
    if names != INPUT_NAMES:
        raise ImportRefused(f"{path.name}: graph inputs are {list(names)}, expected {list(INPUT_NAMES)}")
    for i, want in zip(inputs, INPUT_TYPES, strict=True):
        if i.type != want:
            raise ImportRefused(f"{path.name}: input {i.name!r} is {i.type}, expected {want}")
    rng = np.random.default_rng(0)
    for b in CHECK_BATCHES:
        feeds = {
            "x": rng.standard_normal((b, *shape)).astype(np.float32),
            "t": rng.uniform(0, t_max, b).astype(np.float32),
            "y": rng.integers(0, null_label + 1, b).astype(np.int64),
        }
        try:
            (out, *_) = session.run(None, feeds)
        except Exception as e:  # onnxruntime raises its own types; the first line says what broke
            raise ImportRefused(f"{path.name}: does not run on x {(b, *shape)}: {str(e).splitlines()[0]}") from e
        if out.shape != (b, *shape) or out.dtype != np.float32:
            raise ImportRefused(
                f"{path.name}: output is {out.dtype} {out.shape} for x {(b, *shape)}, expected float32 of x's shape"
            )


def check_decoder_contract(path: Path, shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    """Run a decoder graph at batch 1 and 3; refuse a wrong input name or output shape."""
    session = cpu_session(path, num_threads=1)
    names = [i.name for i in session.get_inputs()]
    if names != [DECODER_INPUT]:
        raise ImportRefused(f"{path.name}: decoder inputs are {names}, expected [{DECODER_INPUT!r}]")
    rng = np.random.default_rng(0)
    for b in CHECK_BATCHES:
        (out, *_) = session.run(None, {DECODER_INPUT: rng.standard_normal((b, *shape)).astype(np.float32)})
        if out.shape != (b, *image_shape) or out.dtype != np.float32:
            raise ImportRefused(
                f"{path.name}: output is {out.dtype} {out.shape} for z {(b, *shape)}, expected float32 "
                f"{(b, *image_shape)}"
            )


def write_imported(
    out: Path,
    onnx_source: onnx.ModelProto | Path,
    *,
    name: str,
    objective: Objective,
    data: dict[str, Any],
    net: dict[str, Any],
    source: dict[str, Any],
    spacing: str | None = None,
    verify: Callable[[Path], dict[str, Any]] | None = None,
    decoder: onnx.ModelProto | None = None,
    latent: dict[str, Any] | None = None,
) -> Checkpoint:
    """A checkpoint in `out` (new or empty) serving the ONNX net; `data` holds kind, shape, normalization,
    num_classes and optionally clip; `net` describes it (kind, hparams); `source` says where it came from.
    `verify(onnx_path)` may refuse the graph (ImportRefused) or return facts recorded beside `source`.
    A latent model passes its `decoder` graph (written as decoder.onnx, beside the net) and its `latent` section
    (scale_factor, image_shape, image_normalization, decoder: {hparams}; the file name is filled in)."""
    if (decoder is None) != (latent is None):
        raise ValueError("a latent model needs both its decoder graph and its latent section")
    if out.exists() and any(out.iterdir()):
        raise ImportRefused(f"--out {out} exists and is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_NAME
    if isinstance(onnx_source, onnx.ModelProto):
        onnx.save_model(onnx_source, path, save_as_external_data=False)
    else:
        shutil.copyfile(onnx_source, path)
    shape = tuple(int(d) for d in data["shape"])
    num_classes = int(data["num_classes"])
    t_max = float(objective.schedule.num_timesteps - 1) if objective.kind == "ddpm" else 1.0
    if decoder is not None:
        onnx.save_model(decoder, out / DECODER_ONNX, save_as_external_data=False)
    try:
        check_contract(path, shape, num_classes, t_max)
        if decoder is not None:
            check_decoder_contract(out / DECODER_ONNX, shape, tuple(latent["image_shape"]))
        checked = verify(path) if verify is not None else {}
    except ImportRefused:
        shutil.rmtree(out)
        raise
    opset = next((o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain == ""), None)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "net": {"kind": net["kind"], "hparams": net.get("hparams", {}), "t_scale": objective.t_scale},
        "objective": objective.to_dict(),
        "data": {**data, "shape": list(shape), "num_classes": num_classes, "null_label": num_classes},
        "training": {},
        "import": {**source, **checked},
        "files": {
            ONNX_NAME: {
                "role": "onnx",
                "sha256": sha256_file(path),
                "weights": "ema",
                "opset": opset,
                "inputs": list(INPUT_NAMES),
                "dynamic_axes": {"batch": 0},
            }
        },
    }
    if decoder is not None:
        manifest["files"][DECODER_ONNX] = {
            "role": "decoder",
            "sha256": sha256_file(out / DECODER_ONNX),
            "inputs": [DECODER_INPUT],
            "dynamic_axes": {"batch": 0},
        }
        manifest["latent"] = {**latent, "decoder": {**latent["decoder"], "file": DECODER_ONNX}}
        preview = _noise_preview(out, data, tuple(latent["image_shape"]))
        if preview is not None:
            state, section = preview
            manifest["files"][section["file"]] = write_preview(out, state, section)
            manifest["latent"]["preview"] = section
    if spacing is not None:
        manifest["sampling"] = {"spacing": spacing}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return load_checkpoint(out)


def _noise_preview(
    out: Path, data: dict[str, Any], image_shape: tuple[int, ...]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """An imported latent model's preview map (training.preview), written into `out`: nothing of its data is at
    hand, so it is fitted to the decoder's images of latents drawn as the samplers start, N(0, I) in the net's
    normalized space (on shapes-vae such a fit reads 24.8 dB from the decoder against 26.8 for one on data
    latents). Returns its weights and manifest section (`"latents": "standard normal"`), or None for a decoder
    whose images are not RGB (the map draws 3 channels)."""
    import torch

    from sampling.request import onnx_decoder

    if image_shape[0] != 3:
        return None
    decode = onnx_decoder(out / DECODER_ONNX)
    z = torch.randn(PREVIEW_NOISE_LATENTS, *data["shape"], generator=torch.Generator().manual_seed(0))
    raw = Normalization(**data["normalization"]).denormalize(z)
    state, psnr = measured_preview(decode, raw, KERNEL)
    return state, preview_manifest(KERNEL, psnr, PREVIEW_NOISE_LATENTS, latents="standard normal")
