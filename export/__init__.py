"""Export: compile a checkpoint's net to ONNX (fused attention, dynamic batch) and TensorRT engines.

`python -m export --checkpoint DIR --format onnx|tensorrt` writes the file into the checkpoint and
records its sha256 in the manifest, where serving's backends find it. Imports only `training`.
"""
