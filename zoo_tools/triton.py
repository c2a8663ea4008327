"""Write a Triton Inference Server model repository for a bundle's ONNX model.

Layout written (the `onnxruntime` backend, platform ``onnxruntime_onnx``)::

    OUT/<model>/config.pbtxt
    OUT/<model>/1/model.onnx

Input and output names and data types come from the bundle's ``metadata.json``
(``network_data_format``) and are checked against the ONNX graph; the dims come from the ONNX graph
itself (a symbolic dimension becomes -1), so the configuration always matches what the server loads.
When the ONNX model's first axis is dynamic for every tensor, the batch axis is left to Triton
(``max_batch_size`` > 0, dynamic batching on); otherwise ``max_batch_size`` is 0 and the full shapes are
given. Pre- and post-processing stay with the client: see docs/deployment.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx

from common.io.atomic import atomic_path, atomic_write_text

ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
NUMPY_NAME_TO_TRITON = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


def onnx_signature(model_path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Names, Triton data types and dims (None for a symbolic axis) of an ONNX model's graph inputs/outputs."""
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            tensor_type = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            out.append({"name": v.name, "data_type": ONNX_TO_TRITON.get(tensor_type.elem_type), "dims": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _check_against_metadata(signature: dict, metadata: dict) -> None:
    """Raise when the bundle metadata names a tensor the ONNX model lacks or types it differently."""
    fmt = metadata.get("network_data_format", {})
    for kind in ("inputs", "outputs"):
        onnx_tensors = {t["name"]: t for t in signature[kind]}
        for name, spec in fmt.get(kind, {}).items():
            if name not in onnx_tensors:
                # a metadata entry may describe a post-processed output the graph does not have
                if kind == "inputs":
                    raise ValueError(f"metadata input {name!r} is not an input of the ONNX model ({list(onnx_tensors)})")
                continue
            expected = NUMPY_NAME_TO_TRITON.get(str(spec.get("dtype", "float32")))
            if expected and onnx_tensors[name]["data_type"] != expected:
                raise ValueError(
                    f"metadata says {kind[:-1]} {name!r} is {spec.get('dtype')}, the ONNX model has "
                    f"{onnx_tensors[name]['data_type']}"
                )


def triton_config(
    model_name: str,
    onnx_path: str | Path,
    metadata: dict | None = None,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    instance_kind: str = "KIND_CPU",
) -> str:
    """The ``config.pbtxt`` text for an ONNX model.

    Args:
        model_name: the Triton model name (folder name).
        onnx_path: the ONNX model.
        metadata: the bundle's metadata.json content, to cross-check names and types.
        max_batch_size: largest batch Triton forms when the model's batch axis is dynamic.
        max_queue_delay_us: how long dynamic batching waits to fill a batch.
        instance_count: model instances per device.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.

    Returns:
        the protobuf text.
    """
    sig = onnx_signature(onnx_path)
    if metadata:
        _check_against_metadata(sig, metadata)
    tensors = sig["inputs"] + sig["outputs"]
    batched = max_batch_size > 0 and all(t["dims"] and t["dims"][0] is None for t in tensors)

    def block(kind: str, items: list[dict]) -> str:
        entries = []
        for t in items:
            dims = t["dims"][1:] if batched else t["dims"]
            dims_text = ", ".join("-1" if d is None else str(d) for d in dims)
            if t["data_type"] is None:
                raise ValueError(f"{onnx_path}: tensor {t['name']!r} has a data type Triton cannot serve")
            entries.append(
                f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n    dims: [ {dims_text} ]\n  }}'
            )
        return f"{kind} [\n" + ",\n".join(entries) + "\n]"

    lines = [
        f'name: "{model_name}"',
        'backend: "onnxruntime"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
        block("input", sig["inputs"]),
        block("output", sig["outputs"]),
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def export_triton(
    bundle: str | Path,
    out: str | Path,
    onnx_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    max_batch_size: int = 8,
    allow_random_weights: bool = False,
) -> Path:
    """Write ``out/<model_name>/config.pbtxt`` and ``out/<model_name>/1/model.onnx`` for a bundle.

    Args:
        bundle: the bundle folder.
        out: the model repository folder (created; other models in it are kept).
        onnx_path: an exported ONNX model; when None the bundle's network is exported with its
            ``configs/export_onnx.yaml`` (parity-checked) from ``checkpoint``.
        checkpoint: weights to export when ``onnx_path`` is None (default: the one export_onnx.yaml names).
        model_name: Triton model name (default: the bundle folder name).
        max_batch_size: largest dynamic batch.
        allow_random_weights: export an untrained network when there is no checkpoint (tests, dry runs).

    Returns:
        the model folder.
    """
    bundle = Path(bundle)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    model_name = model_name or bundle.name
    model_dir = Path(out) / model_name
    target = model_dir / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if onnx_path is None:
        from common.export import export_bundle

        with atomic_path(target) as tmp:
            export_bundle(bundle, ckpt_path=checkpoint, onnx_path=tmp, allow_random_weights=allow_random_weights)
    else:
        with atomic_path(target) as tmp:
            shutil.copyfile(onnx_path, tmp)
    atomic_write_text(
        model_dir / "config.pbtxt", triton_config(model_name, target, metadata, max_batch_size=max_batch_size)
    )
    return model_dir
