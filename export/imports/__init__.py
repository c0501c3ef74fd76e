"""Import of nets made elsewhere: a diffusers UNet2DModel with its scheduler config, or any ONNX file with
inputs (x, t, y) plus a YAML spec, written as a checkpoint the onnxruntime backend serves.

`python -m export import diffusers|onnx` (`cli`); the mapping of diffusers' scheduler settings onto the
project's objective is in `diffusers_scheduler`. diffusers is imported only when a diffusers model is imported.
"""
