"""Export a checkpoint's net to ONNX with a dynamic batch axis and fused attention.

The graph takes the net's own three inputs, so one file serves guided and unguided rows alike (the
null label is just another value of `y`):

    x: (batch, *data_shape) float32,  t: (batch,) float32,  y: (batch,) int64 in [0, num_classes]
    -> pred: (batch, *data_shape) float32

`torch.onnx.export(..., dynamo=True)` translates `F.scaled_dot_product_attention` into one ONNX
`Attention` node from opset 23 on (the operator first appears in opset 23). Below 23 the exporter
decomposes it into MatMul -> Softmax -> MatMul; that fallback is allowed (some runtimes and TensorRT
parsers before 10.14 lack `Attention`) but is reported as unfused. The file is written into the
checkpoint directory as `net-<weights>.onnx` and recorded in the manifest (role "onnx") with its sha256.

A latent model's decoder is exported beside it (`export_decoder_onnx`): `decoder.onnx` (role "decoder-onnx"),
z: (batch, *data_shape) raw latents (the model's samples denormalized) -> image: (batch, *output_shape) in the
autoencoder's [-1, 1], with a dynamic batch axis.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from training.checkpoint import Checkpoint, add_file

ATTENTION_MIN_OPSET = 23  # first opset with the ai.onnx `Attention` operator
DEFAULT_OPSET = 23
# 18 is the exporter's oldest native opset; 17 (the newest TensorRT 8.6 parses) goes through onnx's
# version converter, which handles this net's operators.
MIN_OPSET = 17
# The newest opset torch 2.13's exporter writes for these nets: at 26 its version converter has no
# Gelu adapter, and onnxruntime 1.31 refuses the still-unreleased 27 and 28 that onnx 1.23 can stamp.
MAX_OPSET = 25
INPUT_NAMES = ("x", "t", "y")
OUTPUT_NAME = "pred"
DECODER_ONNX = "decoder.onnx"
DECODER_INPUT, DECODER_OUTPUT = "z", "image"
EXAMPLE_BATCH = 3  # any size > 1: torch.export specialises a dimension traced at size 1


class ExportError(RuntimeError):
    """The export could not be made or does not meet its contract (fused attention, parity)."""


@dataclass(frozen=True)
class AttentionReport:
    """What became of the net's attention blocks in an ONNX graph."""

    expected: int  # attention blocks in the torch net
    attention_nodes: int  # ai.onnx Attention nodes
    softmax_nodes: int
    opset: int

    @property
    def fused(self) -> bool:
        """Every block is one Attention node and no Softmax is left (MatMul-Softmax-MatMul gone)."""
        return self.attention_nodes == self.expected and self.softmax_nodes == 0

    def describe(self) -> str:
        if self.expected == 0:
            return "no attention in this net (MLP)"
        if self.fused:
            return f"fused attention: {self.attention_nodes} Attention node(s), no Softmax (opset {self.opset})"
        return (
            f"unfused attention at opset {self.opset}: {self.attention_nodes} Attention node(s), "
            f"{self.softmax_nodes} Softmax node(s) (MatMul-Softmax-MatMul fallback; opset >= "
            f"{ATTENTION_MIN_OPSET} fuses it)"
        )


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    weights: str
    attention: AttentionReport
    op_counts: dict[str, int] = field(default_factory=dict)


def onnx_file_name(weights: str) -> str:
    return f"net-{weights}.onnx"


def count_attention_blocks(net: torch.nn.Module) -> int:
    """Modules that call scaled_dot_product_attention once each (the DiT's `Attention`)."""
    return sum(1 for m in net.modules() if type(m).__name__ == "Attention")


def attention_report(model: onnx.ModelProto, expected: int) -> AttentionReport:
    """Count Attention / Softmax nodes of `model`, subgraphs and local functions included."""
    ops = op_counts(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return AttentionReport(expected, ops.get("Attention", 0), ops.get("Softmax", 0), opset)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """op_type -> count over the main graph and any local functions (default domain only)."""
    counts: Counter[str] = Counter()
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    for node in nodes:
        if node.domain in ("", "ai.onnx"):
            counts[node.op_type] += 1
    return dict(counts)


def example_inputs(ckpt: Checkpoint, batch: int = EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """(x, t, y) of the net's dtypes; values do not matter for tracing."""
    x = torch.zeros((batch, *ckpt.data_shape), dtype=torch.float32)
    t = torch.full((batch,), 0.5, dtype=torch.float32)
    y = torch.full((batch,), ckpt.null_label, dtype=torch.long)
    return x, t, y


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs optional-dependency notes (torchvision) and a batch-axis rename
    warning on every call; neither concerns this graph, and a CLI should print only what matters."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def to_onnx_model(net: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int) -> onnx.ModelProto:
    """Trace `net` with torch.export (batch axis dynamic on all three inputs) and translate to ONNX."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        program = torch.onnx.export(
            net,
            inputs,
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def export_onnx(
    ckpt: Checkpoint, opset: int = DEFAULT_OPSET, weights: str = "ema", require_fused: bool | None = None
) -> OnnxExport:
    """Export `ckpt`'s net (EMA weights by default) into `ckpt.path / net-<weights>.onnx`.

    require_fused: refuse a DiT graph whose attention is not fused; defaults to True exactly when
    `opset >= 23`, where fusion is expected (below it the unfused chain is the documented fallback).
    Records the file (role "onnx", with opset, weights, attention facts) and its sha256 in the manifest.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset} is below {MIN_OPSET}, the oldest opset this exporter supports")
    if opset > MAX_OPSET:
        raise ValueError(f"--opset {opset} is above {MAX_OPSET}, the newest opset this exporter writes")
    if require_fused is None:
        require_fused = opset >= ATTENTION_MIN_OPSET
    net = ckpt.net(weights)
    model = to_onnx_model(net, example_inputs(ckpt), opset)
    onnx.checker.check_model(model, full_check=True)
    report = attention_report(model, count_attention_blocks(net))
    if require_fused and not report.fused:
        raise ExportError(f"{ckpt.name}: {report.describe()}")
    name = onnx_file_name(weights)
    path = ckpt.path / name
    tmp = path.with_suffix(".onnx.tmp")
    # One self-contained file (no external data) so that one sha256 covers graph and weights.
    onnx.save_model(model, tmp, save_as_external_data=False)
    tmp.replace(path)
    info: dict[str, Any] = {
        "opset": report.opset,
        "weights": weights,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "dynamic_axes": {"batch": 0},
        "attention": {
            "blocks": report.expected,
            "attention_nodes": report.attention_nodes,
            "softmax_nodes": report.softmax_nodes,
            "fused": report.fused,
        },
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    add_file(ckpt.path, name, "onnx", **info)
    return OnnxExport(path, report.opset, weights, report, op_counts(model))


def decoder_to_onnx_model(decoder: torch.nn.Module, z: torch.Tensor, opset: int) -> onnx.ModelProto:
    """Trace a decoder, raw latents z (B, C, h, w) -> image (B, 3, H, W), batch axis dynamic; checked."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        program = torch.onnx.export(
            decoder,
            (z,),
            dynamo=True,
            opset_version=opset,
            input_names=[DECODER_INPUT],
            output_names=[DECODER_OUTPUT],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model


def export_decoder_onnx(ckpt: Checkpoint, opset: int = DEFAULT_OPSET) -> Path:
    """Export a latent model's decoder into `ckpt.path / decoder.onnx` (dynamic batch), recorded in the manifest
    (role "decoder-onnx") with its sha256; ExportError for a model without a decoder."""
    if not ckpt.latent:
        raise ExportError(f"{ckpt.name}: not a latent model, it has no decoder to export")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"--opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}, what this exporter writes")
    z = torch.zeros((EXAMPLE_BATCH, *ckpt.data_shape), dtype=torch.float32)
    model = decoder_to_onnx_model(ckpt.decoder(), z, opset)
    path = ckpt.path / DECODER_ONNX
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save_model(model, tmp, save_as_external_data=False)
    tmp.replace(path)
    add_file(
        ckpt.path,
        DECODER_ONNX,
        "decoder-onnx",
        opset=opset,
        inputs=[DECODER_INPUT],
        output=DECODER_OUTPUT,
        dynamic_axes={"batch": 0},
        source_sha256=ckpt.manifest["files"][ckpt.latent["decoder"]["file"]]["sha256"],  # the weights it holds
        torch=torch.__version__,
        onnx=onnx.__version__,
    )
    return path
