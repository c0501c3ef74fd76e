"""ONNX export: fused attention, dynamic batch, manifest record, refusal of tampered files, fallback opset."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from export.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    attention_report,
    count_attention_blocks,
    export_onnx,
    op_counts,
)
from export.parity import eval_parity, ort_forward
from serving.backends import load_backend
from tests.export.helpers import copy_checkpoint, exported_checkpoints
from training.checkpoint import CheckpointError, load_checkpoint, sha256_file


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    return exported_checkpoints(tiny_checkpoints, tmp_path_factory)


@pytest.mark.parametrize("name", ["digits-fm", "digits-ddpm"])
def test_dit_attention_is_one_attention_node_per_block_and_no_softmax(exported, name):
    ckpt = load_checkpoint(exported[name])
    model = onnx.load(ckpt.file("net-ema.onnx"))
    blocks = count_attention_blocks(ckpt.net())
    assert blocks == ckpt.manifest["net"]["hparams"]["depth"]  # one attention per DiT block
    ops = op_counts(model)
    assert ops.get("Attention") == blocks
    assert "Softmax" not in ops
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert all(n.domain in ("", "ai.onnx") for n in attention)  # the standard operator, not a contrib op
    assert attention_report(model, blocks).fused
    assert ckpt.manifest["files"]["net-ema.onnx"]["attention"] == {
        "blocks": blocks,
        "attention_nodes": blocks,
        "softmax_nodes": 0,
        "fused": True,
    }


@pytest.mark.parametrize("name", ["moons-fm", "digits-ddpm"])
def test_graph_has_named_inputs_with_a_dynamic_batch_axis(exported, name):
    ckpt = load_checkpoint(exported[name])
    model = onnx.load(ckpt.file("net-ema.onnx"))
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    elem = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert elem == {"x": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.FLOAT, "y": onnx.TensorProto.INT64}
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value"), f"{value.name}: batch axis is fixed"
        assert [d.dim_value for d in dims[1:]] == list(ckpt.data_shape)[: len(dims) - 1]


def test_manifest_records_the_file_hash_and_export_facts(exported):
    ckpt = load_checkpoint(exported["digits-fm"])
    info = ckpt.manifest["files"]["net-ema.onnx"]
    assert info["role"] == "onnx"
    assert info["sha256"] == sha256_file(ckpt.path / "net-ema.onnx")
    assert info["opset"] == 23 and info["weights"] == "ema"
    assert ckpt.files_with_role("onnx") == ["net-ema.onnx"]
    assert not list(ckpt.path.glob("*.data"))  # weights inside the one hashed file, no external data


def test_tampered_onnx_file_is_refused_at_load(exported, tmp_path):
    d = copy_checkpoint(exported["moons-fm"], tmp_path)
    ckpt = load_checkpoint(d)
    path = d / "net-ema.onnx"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside the weights: still loadable, silently wrong
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch for net-ema.onnx"):
        load_backend("onnxruntime", ckpt)
    with pytest.raises(CheckpointError, match="net-ema.onnx"):
        load_checkpoint(d)


def test_raw_weights_export_beside_ema(tiny_checkpoints, tmp_path):
    d = copy_checkpoint(tiny_checkpoints["moons-ddpm"], tmp_path)
    export_onnx(load_checkpoint(d), weights="raw")
    ckpt = load_checkpoint(d)
    assert ckpt.manifest["files"]["net-raw.onnx"]["weights"] == "raw"
    results = eval_parity(ckpt, ort_forward(ckpt.file("net-raw.onnx")), (1, 7), weights="raw")
    assert all(r.ok for r in results), results
    # raw and EMA weights differ after training, so the file must follow the weights asked for
    ema = eval_parity(ckpt, ort_forward(ckpt.file("net-raw.onnx")), (7,), weights="ema")
    assert ema[0].max_abs_diff > 1e-3


def test_older_opset_falls_back_to_an_unfused_chain_that_still_matches(exported, tmp_path):
    """Opset 18 (for runtimes without ai.onnx Attention) decomposes attention into MatMul-Softmax-MatMul."""
    d = copy_checkpoint(exported["digits-fm"], tmp_path)
    result = export_onnx(load_checkpoint(d), opset=18)
    assert result.opset == 18
    assert not result.attention.fused
    assert result.attention.softmax_nodes == result.attention.expected == 4
    assert result.attention.attention_nodes == 0
    assert "MatMul-Softmax-MatMul" in result.attention.describe()
    ckpt = load_checkpoint(d)
    assert ckpt.manifest["files"]["net-ema.onnx"]["attention"]["fused"] is False
    assert all(r.ok for r in eval_parity(ckpt, ort_forward(result.path), (1, 7, 64)))


@pytest.mark.parametrize("opset", [16, 26])
def test_unsupported_opsets_are_refused(tiny_checkpoints, opset):
    with pytest.raises(ValueError, match=f"--opset {opset}"):
        export_onnx(load_checkpoint(tiny_checkpoints["moons-fm"]), opset=opset)
