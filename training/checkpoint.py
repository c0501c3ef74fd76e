"""Checkpoints: a directory with `manifest.json` plus safetensors weights (and exported files).

The manifest is the contract between training, export and serving. It records the format version,
the net, the objective, the data, training facts and the sha256 of every file; loading checks every
hash and never unpickles anything.

    manifest.json
    weights.safetensors   raw weights        (role "raw")
    ema.safetensors       EMA weights        (role "ema")
    net-ema.onnx, ...     added by `export`  (roles "onnx", "tensorrt")
    train_state.safetensors  optimizer state for resuming, recorded under "resume" (not needed to serve)
    decoder.safetensors   a latent model's decoder (role "decoder"; manifest section `latent`)
    preview.safetensors   a latent model's linear preview map (role "preview"; `latent.preview`; optional)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.data import Normalization
from training.nets import build_net
from training.paths import Objective, objective_from_dict
from training.preview import load_preview, save_preview

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHT_FILES = {"raw": "weights.safetensors", "ema": "ema.safetensors"}
RESUME_FILE = "train_state.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, tampered with or of an unknown format."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_manifest(ckpt_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Replace a checkpoint's manifest (atomically)."""
    _write_json_atomic(Path(ckpt_dir) / MANIFEST, manifest)


def write_preview(ckpt_dir: str | Path, state: dict[str, torch.Tensor], section: dict[str, Any]) -> dict[str, Any]:
    """Write a latent model's preview map (training.preview) as `section["file"]` in the checkpoint directory;
    returns its entry for the manifest's `files` (role "preview", sha256)."""
    path = Path(ckpt_dir) / section["file"]
    save_preview(state, path)
    return {"role": "preview", "sha256": sha256_file(path)}


def read_manifest(ckpt_dir: str | Path) -> dict[str, Any]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {d}")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{d} is not a checkpoint: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: not valid JSON ({e})") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{mpath}: unknown checkpoint format_version {version!r}; this code reads version {FORMAT_VERSION}"
        )
    return manifest


def verify_file(ckpt_dir: Path, name: str, expected_sha256: str) -> Path:
    path = ckpt_dir / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir}: file {name} listed in the manifest is missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise CheckpointError(
            f"checkpoint {ckpt_dir}: sha256 mismatch for {name} (manifest {expected_sha256[:12]}..., "
            f"file {actual[:12]}...); the file was modified or corrupted"
        )
    return path


def add_file(ckpt_dir: str | Path, name: str, role: str, **info: Any) -> None:
    """Record (or re-record) a file that lies in the checkpoint directory, with its sha256."""
    d = Path(ckpt_dir)
    manifest = read_manifest(d)
    manifest["files"][name] = {"role": role, "sha256": sha256_file(d / name), **info}
    _write_json_atomic(d / MANIFEST, manifest)


def has_torch_weights(manifest: dict[str, Any]) -> bool:
    """Whether the manifest lists torch weights (an imported ONNX-only net has none)."""
    return all(name in manifest.get("files", {}) for name in WEIGHT_FILES.values())


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint. Weights are read lazily by `net()`."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def objective(self) -> Objective:
        return objective_from_dict(self.manifest["objective"])

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["data"]["shape"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["data"]["num_classes"])

    @property
    def null_label(self) -> int:
        return int(self.manifest["data"]["null_label"])

    @property
    def data_kind(self) -> str:
        return self.manifest["data"]["kind"]

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.manifest["data"]["normalization"])

    @property
    def data_clip(self) -> tuple[float, float] | None:
        """Data-space range samples are clipped to: the manifest's `data.clip`, else [0, 1] for digits."""
        clip = self.manifest["data"].get("clip")
        if clip is not None:
            return float(clip[0]), float(clip[1])
        return (0.0, 1.0) if self.data_kind in ("digits", "shapes") else None

    @property
    def latent(self) -> dict[str, Any] | None:
        """The `latent` section of a model of an autoencoder's latents (its decoder, scale factor, image shape),
        else None."""
        return self.manifest.get("latent")

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one sample in data space: the decoded image's for a latent model, else `data_shape`."""
        return tuple(self.latent["image_shape"]) if self.latent else self.data_shape

    def decoder(self) -> nn.Module:
        """A latent model's decoder (latents to images in [-1, 1]), verified, eval mode, gradients off; built once
        per Checkpoint object."""
        if not self.latent:
            raise CheckpointError(f"model {self.name!r} ({self.path}) is not a latent model: it has no decoder")
        cached = self.__dict__.get("_decoder")
        if cached is None:
            from training.nets.vae import build_decoder

            info = self.latent["decoder"]
            if self.decoder_is_onnx:
                raise CheckpointError(
                    f"model {self.name!r} ({self.path}): its decoder was imported as ONNX ({info['file']}), not torch "
                    f"weights; it runs on onnxruntime"
                )
            try:
                cached = build_decoder(**info["hparams"])
                cached.load_state_dict(load_file(self.file(info["file"])), strict=True)
            except (TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"model {self.name!r} ({self.path}): its decoder does not load: {e}") from e
            cached = cached.eval().requires_grad_(False)
            self.__dict__["_decoder"] = cached  # (a frozen dataclass: set beside its fields)
        return cached

    def preview_map(self) -> dict[str, torch.Tensor] | None:
        """A latent model's preview map (training.preview: the decoder's linear stand-in), verified; None where
        the checkpoint has none (one written before preview maps, or an import whose images are not RGB)."""
        info = (self.latent or {}).get("preview")
        if info is None:
            return None
        path = self.file(info["file"])  # (a missing or tampered file is refused by name here)
        try:
            return load_preview(path)
        except Exception as e:  # safetensors raises its own error type for a malformed file
            raise CheckpointError(f"model {self.name!r} ({self.path}): its preview map does not load: {e}") from e

    @property
    def decoder_is_onnx(self) -> bool:
        """True for a latent model imported with its decoder as an ONNX graph (no torch decoder weights)."""
        return bool(self.latent) and self.latent["decoder"]["file"].endswith(".onnx")

    @property
    def default_spacing(self) -> str | None:
        """The DDPM timestep spacing a request gets when it names none (an imported scheduler's); None: the
        samplers' own default."""
        return self.manifest.get("sampling", {}).get("spacing")

    @property
    def has_torch_weights(self) -> bool:
        """False for a net imported as an ONNX file only: it serves with onnxruntime (or TensorRT), not torch."""
        return has_torch_weights(self.manifest)

    def files_with_role(self, role: str) -> list[str]:
        return [name for name, info in self.manifest["files"].items() if info.get("role") == role]

    def file(self, name: str) -> Path:
        """Path of a listed file, re-verified against its recorded hash."""
        info = self.manifest["files"].get(name)
        if info is None:
            raise CheckpointError(f"checkpoint {self.path}: no file {name!r} in the manifest")
        return verify_file(self.path, name, info["sha256"])

    def build_net(self) -> nn.Module:
        net = self.manifest["net"]
        return build_net(net["kind"], net["hparams"], self.data_shape, self.num_classes, net["t_scale"])

    def net(self, weights: str = "ema") -> nn.Module:
        """The net with `weights` ("ema" or "raw") loaded, in eval mode, gradients off."""
        if weights not in WEIGHT_FILES:
            raise ValueError(f"weights must be one of {sorted(WEIGHT_FILES)}, got {weights!r}")
        if not self.has_torch_weights:
            raise CheckpointError(
                f"model {self.name!r} ({self.path}) has no torch weights: its net was imported as ONNX "
                f"({self.manifest['net']['kind']}); serve it with backend 'onnxruntime'"
            )
        model = self.build_net()
        state = load_file(self.file(WEIGHT_FILES[weights]))
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)


def load_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    """Read the manifest and verify the sha256 of every listed file."""
    d = Path(ckpt_dir)
    manifest = read_manifest(d)
    for key in ("name", "net", "objective", "data", "files"):
        if key not in manifest:
            raise CheckpointError(f"{d / MANIFEST}: required key {key!r} is missing")
    latent = manifest.get("latent")
    if latent is not None:
        section = latent.get("decoder") if isinstance(latent, dict) else None
        decoder = section.get("file") if isinstance(section, dict) else None
        if not decoder or manifest["files"].get(decoder, {}).get("role") != "decoder":
            raise CheckpointError(
                f"{d / MANIFEST}: a latent model whose decoder ({decoder or 'latent.decoder.file'}) is not listed "
                f"among its files"
            )
        keys = ("scale_factor", "image_shape", "image_normalization")
        missing = [k for k in keys if k not in latent] + [k for k in ("hparams",) if k not in section]
        if missing:
            raise CheckpointError(f"{d / MANIFEST}: the latent section lacks {', '.join(missing)}")
    for name, info in manifest["files"].items():
        verify_file(d, name, info["sha256"])
    return Checkpoint(d, manifest)


def save_checkpoint(
    out: str | Path,
    *,
    name: str,
    net_kind: str,
    net_hparams: dict[str, Any],
    t_scale: float,
    model: nn.Module,
    ema_model: nn.Module,
    objective: Objective,
    data: dict[str, Any],
    training: dict[str, Any],
    train_state: dict[str, torch.Tensor] | None = None,
    sampling: dict[str, Any] | None = None,
    latent: Any = None,
) -> Path:
    """Write weights, EMA weights (and optionally the resume state) and a manifest into `out`.

    `data` holds kind, shape, normalization (dict), num_classes; null_label = num_classes is added.
    Files that export added earlier are dropped from the manifest: they belong to old weights. `sampling`: the
    defaults requests get when they leave them out (e.g. {"spacing": "leading"}); None or empty writes none.
    `latent`: a training.latents.LatentSpace for a model of an autoencoder's latents; its decoder (role
    "decoder") and its preview map (role "preview") are written beside the weights and their description into
    the manifest's `latent` section.
    """
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for role, module in (("raw", model), ("ema", ema_model)):
        fname = WEIGHT_FILES[role]
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(d / fname))
        files[fname] = {"role": role, "sha256": sha256_file(d / fname)}
    if latent is not None:
        section = latent.manifest()
        fname = section["decoder"]["file"]
        save_file({k: v.detach().contiguous().cpu() for k, v in latent.decoder_state.items()}, str(d / fname))
        files[fname] = {"role": "decoder", "sha256": sha256_file(d / fname)}
        files[section["preview"]["file"]] = write_preview(d, latent.preview_state, section["preview"])
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "net": {"kind": net_kind, "hparams": dict(net_hparams), "t_scale": float(t_scale)},
        "objective": objective.to_dict(),
        "data": {**data, "shape": list(data["shape"]), "null_label": int(data["num_classes"])},
        "training": training,
        "files": files,
    }
    if sampling:
        manifest["sampling"] = dict(sampling)
    if latent is not None:
        manifest["latent"] = section
    if train_state is not None:
        save_file(train_state, str(d / RESUME_FILE))
        manifest["resume"] = {"file": RESUME_FILE, "sha256": sha256_file(d / RESUME_FILE)}
    _write_json_atomic(d / MANIFEST, manifest)
    return d


def load_train_state(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    info = ckpt.manifest.get("resume")
    if info is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no resume state (trained without it?)")
    return load_file(verify_file(ckpt.path, info["file"], info["sha256"]))
