"""`crossback export`: a finished task's folded model as one ONNX or TorchScript file, for runtimes
without crossback (ONNX Runtime, TensorRT on a Jetson, libtorch).

The file takes exactly what ``crossback.data.tasks.image_inputs`` / ``text_inputs`` produce (uint8
images (B, C, S, S) as loaded and resized by ``load_image``; or Perceiver byte ids (B, L), 0 as padding)
and returns logits (B, classes); the batch dimension is dynamic. How to make those inputs travels with
the model, as JSON: in the ONNX file's metadata (key ``crossback``), in the TorchScript archive
(extra file ``crossback.json``), and beside either as ``FILE.json``. The frozen pretrained front ends
(EfficientNet-Lite0, MiniLM) run outside the model, so such tasks are not exported.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from crossback.app.predict import load_task_model
from crossback.config.errors import ConfigError
from crossback.models.inference import TaskModel

FORMATS = ("onnx", "torchscript")
OPSET = 17


def metadata(tm: TaskModel) -> dict:
    view = tm.view
    if view.modality == "image":
        inputs = {"name": "inputs", "dtype": "uint8", "shape": ["batch", view.channels, view.image_size, view.image_size],
                  "preprocessing": f"decode, convert to {'L' if view.channels == 1 else 'RGB'}, resize to "
                                   f"{view.image_size}x{view.image_size} (bilinear, Pillow) unless already that size, "
                                   "channels first; pixel bytes as they are (the model scales them)"}
    else:
        inputs = {"name": "inputs", "dtype": "int64", "shape": ["batch", view.text_max_length],
                  "preprocessing": f"Perceiver byte ids: 4 ([CLS]), each UTF-8 byte + 6, 5 ([SEP]); truncated to "
                                   f"{view.text_max_length} and padded with 0 (transformers' PerceiverTokenizer)"}
    return {"format": "crossback.export/1", "task": tm.task, "classes": tm.classes, "modality": view.modality,
            "inputs": inputs, "outputs": {"name": "logits", "dtype": "float32", "shape": ["batch", len(tm.classes)]},
            "checkpoint": str(tm.checkpoint) if tm.checkpoint else None}


def example_inputs(tm: TaskModel, batch: int = 2) -> torch.Tensor:
    from crossback.app.predict import encode

    view = tm.view
    if view.modality == "image":
        return torch.zeros(batch, view.channels, view.image_size, view.image_size, dtype=torch.uint8)
    return encode(["crossback"] * batch, view)


def export_task(folder: Path, task: str, fmt: str, out: Path) -> dict:
    """Write task ``task`` of ``folder`` to ``out``; returns the metadata written with it."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r}; choose one of {list(FORMATS)}")
    tm = load_task_model(folder, task, "cpu")
    if tm.view.image_encoder != "patches" or tm.view.text_encoder != "bytes":
        raise ConfigError(f"task {task!r} reads a pretrained front end's features (model.image.encoder / "
                          "model.text.encoder); export supports the built-in patch and byte front ends only")
    meta = metadata(tm)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = example_inputs(tm)
    with warnings.catch_warnings():  # the adapters' shape checks are constant for a traced model: expected
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            _onnx(tm.model, x, out, meta)
        else:
            traced = torch.jit.trace(tm.model, (x,), check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={"crossback.json": json.dumps(meta)})
    Path(f"{out}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _onnx(model, x: torch.Tensor, out: Path, meta: dict) -> None:
    import onnx

    torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=["inputs"], output_names=["logits"],
                      dynamic_axes={"inputs": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET)
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "crossback", json.dumps(meta)
    onnx.save(proto, str(out))
