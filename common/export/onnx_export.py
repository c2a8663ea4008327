"""Export a bundle's network to ONNX and prove, on ONNX Runtime, that it computes what PyTorch computes.

A bundle describes its export in ``configs/export_onnx.yaml``::

    network_config: inference.yaml   # config (relative to configs/) whose `network_def` is exported
    ckpt_path: models/model.pt       # relative to bundle_root (--ckpt_path overrides)
    onnx_path: models/model.onnx     # relative to bundle_root (--onnx_path overrides)
    opset: 18
    wrapper: null                    # optional "module.Class", called as Wrapper(network)
    inputs:                          # in forward() argument order
      - {name: image, shape: [1, 1, 96, 96, 96], dtype: float32}
    outputs: [pred]                  # output names, in the order the (wrapped) network returns them
    dynamic_axes: {image: {0: batch}, pred: {0: batch}}
    parity_shapes: []                # optional extra input shapes checked (exercise dynamic axes)
    tolerance: {rtol: 1.0e-3, atol: 1.0e-4}
    exporter: torchscript            # optional: torchscript (default) or dynamo

Outputs may be a tensor, a tuple/list (in ``outputs`` order) or a dict (matched to ``outputs`` by key);
they are flattened to a tuple before export, so a wrapper is only needed for anything more exotic.

Exporter choice: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript tracer) is the default. On
torch 2.13 it exports MONAI's Conv3d UNets with ``dynamic_axes`` in well under a second and names
output axes as asked; the torch.export-based ``dynamo=True`` exporter also works on them but takes
~15x longer and renames dynamic output axes to symbolic expressions. ``exporter: dynamo`` selects it
(dynamic axes become ``torch.export.Dim.AUTO``), and it is used automatically if a future torch drops
the TorchScript exporter. Whichever exporter runs, the ONNX Runtime parity check decides.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io.atomic import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = {"rtol": 1.0e-3, "atol": 1.0e-4}
_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_EXPORTERS = ("torchscript", "dynamo")


class OnnxParityError(AssertionError):
    """The ONNX model does not reproduce the PyTorch network within the stated tolerance."""


class ExportConfigError(ValueError):
    """``export_onnx.yaml`` is missing a key or has a value that cannot be used."""


class FlattenOutputs(torch.nn.Module):
    """Return a network's outputs as a tuple in ``output_names`` order.

    A tensor stays one output; a tuple/list is kept in order; a dict is looked up by ``output_names``
    (or taken in insertion order when its keys are not the output names).

    Args:
        network: the network (already wrapped, if the bundle names a wrapper).
        output_names: the names the outputs get in the ONNX graph.
    """

    def __init__(self, network: torch.nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.output_names = list(output_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(*args)
        if isinstance(out, torch.Tensor):
            flat: tuple = (out,)
        elif isinstance(out, Mapping):
            keys = self.output_names if all(k in out for k in self.output_names) else list(out)
            flat = tuple(out[k] for k in keys)
        elif isinstance(out, (tuple, list)):
            flat = tuple(out)
        else:
            raise TypeError(f"the network returned {type(out).__name__}; give export_onnx.yaml a `wrapper`")
        if len(flat) != len(self.output_names):
            raise ExportConfigError(
                f"the network returns {len(flat)} outputs but export_onnx.yaml names {len(self.output_names)}: "
                f"{self.output_names}"
            )
        return flat


def _torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[str(name).lower()]
    except KeyError as e:
        raise ExportConfigError(f"unknown input dtype {name!r}; use one of {sorted(_DTYPES)}") from e


def make_inputs(
    input_specs: Sequence[Mapping[str, Any]], shapes: Sequence[Sequence[int]] | None = None, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs for the parity check: standard normal floats, integers in [0, 4), random booleans.

    Args:
        input_specs: ``inputs`` of export_onnx.yaml (``name``, ``shape``, ``dtype``).
        shapes: one shape per input (default: each spec's ``shape``).
        seed: the generator seed, so a failure can be reproduced.

    Returns:
        one tensor per input, in order.
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for i, spec in enumerate(input_specs):
        shape = [int(s) for s in (shapes[i] if shapes is not None else spec["shape"])]
        dtype = _torch_dtype(spec.get("dtype", "float32"))
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.rand(shape, generator=gen) > 0.5)
        else:
            tensors.append(torch.randint(0, 4, shape, generator=gen).to(dtype))
    return tuple(tensors)


def _parity_shape_sets(input_specs: Sequence[Mapping[str, Any]], parity_shapes: Sequence[Any]) -> list[list[list[int]]]:
    """Normalise ``parity_shapes`` entries to one full shape list per check.

    An entry is a shape (for the first input; the others keep their export shape), a list of shapes
    (one per input), or a mapping ``{input name: shape}``.
    """
    base = [list(s["shape"]) for s in input_specs]
    names = [s["name"] for s in input_specs]
    sets = [base]
    for entry in parity_shapes or []:
        shapes = [list(s) for s in base]
        if isinstance(entry, Mapping):
            for name, shape in entry.items():
                if name not in names:
                    raise ExportConfigError(f"parity_shapes names input {name!r}; inputs are {names}")
                shapes[names.index(name)] = list(shape)
        elif entry and all(isinstance(s, (list, tuple)) for s in entry):
            if len(entry) != len(base):
                raise ExportConfigError(f"parity_shapes entry {entry} needs one shape per input ({len(base)})")
            shapes = [list(s) for s in entry]
        else:
            shapes[0] = list(entry)
        sets.append(shapes)
    return sets


def compare_outputs(
    expected: Sequence[torch.Tensor], actual: Sequence[np.ndarray], names: Sequence[str], rtol: float, atol: float
) -> dict[str, Any]:
    """Compare PyTorch outputs with ONNX Runtime outputs, ``numpy.allclose`` style.

    An element passes when ``|actual - expected| <= atol + rtol * |expected|``. The relative error is
    reported over elements with ``|expected| > atol`` (near zero only the absolute error is meaningful).

    Returns:
        ``{"max_abs_err", "max_rel_err", "passed", "outputs": {name: {...}}}``.
    """
    report: dict[str, Any] = {"max_abs_err": 0.0, "max_rel_err": 0.0, "passed": True, "outputs": {}}
    for name, exp, act in zip(names, expected, actual):
        exp_np = exp.detach().cpu().numpy().astype(np.float64)
        act_np = np.asarray(act).astype(np.float64)
        entry: dict[str, Any] = {"torch_shape": list(exp_np.shape), "onnx_shape": list(act_np.shape)}
        if exp_np.shape != act_np.shape:
            entry.update(max_abs_err=float("inf"), max_rel_err=float("inf"), passed=False)
        else:
            diff = np.abs(act_np - exp_np)
            finite = np.isfinite(exp_np) & np.isfinite(act_np)
            same_nonfinite = ~finite & ((act_np == exp_np) | (np.isnan(act_np) & np.isnan(exp_np)))
            diff = np.where(same_nonfinite, 0.0, np.where(finite, diff, np.inf))
            big = np.abs(exp_np) > atol
            rel = np.where(big, diff / np.where(big, np.abs(exp_np), 1.0), 0.0)
            ok = diff <= atol + rtol * np.where(finite, np.abs(exp_np), 0.0)
            entry.update(
                max_abs_err=float(diff.max()) if diff.size else 0.0,
                max_rel_err=float(rel.max()) if rel.size else 0.0,
                passed=bool(ok.all()),
            )
        report["outputs"][name] = entry
        report["max_abs_err"] = max(report["max_abs_err"], entry["max_abs_err"])
        report["max_rel_err"] = max(report["max_rel_err"], entry["max_rel_err"])
        report["passed"] = report["passed"] and entry["passed"]
    return report


def _normalise_dynamic_axes(dynamic_axes: Mapping[str, Any] | None) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for name, axes in (dynamic_axes or {}).items():
        if isinstance(axes, Mapping):
            out[name] = {int(k): str(v) for k, v in axes.items()}
        else:
            out[name] = {int(a): f"{name}_dim{int(a)}" for a in axes}
    return out


def _torch_export(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_axes: dict[str, dict[int, str]],
    exporter: str,
) -> str:
    """Run ``torch.onnx.export`` with the chosen exporter; returns the exporter actually used."""
    if exporter == "torchscript":
        try:
            with warnings.catch_warnings():
                # the TorchScript exporter's deprecation and instance-norm notices say nothing actionable
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    example,
                    str(path),
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    dynamic_axes=dynamic_axes or None,
                    do_constant_folding=True,
                    dynamo=False,
                )
            return "torchscript"
        except TypeError as e:  # a torch without the TorchScript exporter
            logger.warning("TorchScript ONNX exporter unavailable (%s); using the dynamo exporter", e)
    dim = torch.export.Dim.AUTO
    per_input = tuple({a: dim for a in dynamic_axes.get(n, {})} or None for n in input_names)
    # FlattenOutputs.forward(*args): torch.export sees one positional argument, the tuple of inputs
    dynamic_shapes = (per_input,)
    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes if any(d is not None for d in per_input) else None,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return "dynamo"


def export_network(
    network: torch.nn.Module,
    output_path: str | os.PathLike,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[str],
    opset: int = 18,
    dynamic_axes: Mapping[str, Any] | None = None,
    parity_shapes: Sequence[Any] = (),
    tolerance: Mapping[str, float] | None = None,
    exporter: str = "torchscript",
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``network`` to ONNX, check it on ONNX Runtime against PyTorch, then move it into place.

    The model is written to a temporary name next to ``output_path`` and renamed only when every
    parity check passes, so a failed export never replaces a good model.

    Args:
        network: the PyTorch network (already wrapped if needed); put in eval mode, on CPU.
        output_path: where the ``.onnx`` file goes.
        inputs: ``[{name, shape, dtype}, ...]`` in forward() argument order.
        outputs: output names, in the order the network returns them (dict outputs: by key).
        opset: ONNX opset version.
        dynamic_axes: ``{tensor name: {axis: label}}`` (or ``{name: [axes]}``) for inputs and outputs.
        parity_shapes: extra input shapes to check (see :func:`_parity_shape_sets`).
        tolerance: ``{"rtol", "atol"}``; default ``DEFAULT_TOLERANCE``.
        exporter: ``"torchscript"`` (default) or ``"dynamo"``.
        seed: seed of the random parity inputs.

    Returns:
        a JSON-able report ``{max_abs_err, max_rel_err, passed, onnx_path, opset, seconds, exporter,
        checks: [...]}``.

    Raises:
        OnnxParityError: an output differs beyond the tolerance or has another shape (the message has
            the max abs/rel errors per output and input shape).
    """
    import onnx
    import onnxruntime as ort

    start = time.perf_counter()
    if exporter not in _EXPORTERS:
        raise ExportConfigError(f"exporter must be one of {_EXPORTERS}, not {exporter!r}")
    if not inputs:
        raise ExportConfigError("export_onnx.yaml lists no `inputs`")
    if not outputs:
        raise ExportConfigError("export_onnx.yaml lists no `outputs`")
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    input_names = [str(s["name"]) for s in inputs]
    output_names = [str(n) for n in outputs]
    axes = _normalise_dynamic_axes(dynamic_axes)
    unknown = [n for n in axes if n not in input_names + output_names]
    if unknown:
        raise ExportConfigError(f"dynamic_axes names {unknown}, which are neither inputs nor outputs")
    model = FlattenOutputs(network, output_names).eval().cpu()
    shape_sets = _parity_shape_sets(inputs, parity_shapes)

    with atomic_path(output_path) as tmp, torch.no_grad():
        example = make_inputs(inputs, seed=seed)
        used = _torch_export(model, example, tmp, input_names, output_names, int(opset), axes, exporter)
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        checks = []
        for i, shapes in enumerate(shape_sets):
            feeds = make_inputs(inputs, shapes, seed=seed + i)
            expected = model(*feeds)
            actual = session.run(output_names, {n: t.numpy() for n, t in zip(input_names, feeds)})
            check = compare_outputs(expected, actual, output_names, tol["rtol"], tol["atol"])
            check["input_shapes"] = shapes
            checks.append(check)
        report = {
            "max_abs_err": max(c["max_abs_err"] for c in checks),
            "max_rel_err": max(c["max_rel_err"] for c in checks),
            "passed": all(c["passed"] for c in checks),
            "onnx_path": str(Path(output_path)),
            "opset": int(opset),
            "exporter": used,
            "tolerance": tol,
            "checks": checks,
        }
        if not report["passed"]:
            lines = [
                f"  inputs {c['input_shapes']}: {name} max_abs_err={o['max_abs_err']:.3g} "
                f"max_rel_err={o['max_rel_err']:.3g} torch shape {o['torch_shape']} onnx shape {o['onnx_shape']}"
                for c in checks
                for name, o in c["outputs"].items()
                if not o["passed"]
            ]
            raise OnnxParityError(
                f"ONNX Runtime output differs from PyTorch beyond rtol={tol['rtol']}, atol={tol['atol']} "
                f"(max_abs_err={report['max_abs_err']:.3g}, max_rel_err={report['max_rel_err']:.3g}); "
                f"{output_path} was not written:\n" + "\n".join(lines)
            )
    report["seconds"] = round(time.perf_counter() - start, 3)
    logger.info(
        "exported %s (%s, opset %d): max_abs_err=%.3g max_rel_err=%.3g over %d input shapes",
        output_path, used, int(opset), report["max_abs_err"], report["max_rel_err"], len(checks),
    )
    return report


def _import_object(dotted: str) -> Any:
    from pydoc import locate

    obj = locate(dotted)
    if obj is None:
        raise ExportConfigError(f"wrapper {dotted!r} cannot be imported")
    return obj


def load_export_config(bundle_root: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``configs/export_onnx.yaml`` of a bundle.

    Returns:
        the config with defaults filled in (``opset`` 18, ``tolerance``, ``parity_shapes`` [],
        ``wrapper`` None, ``exporter`` "torchscript", ``dynamic_axes`` {}).
    """
    import yaml

    path = Path(bundle_root) / "configs" / "export_onnx.yaml"
    if not path.is_file():
        raise ExportConfigError(f"{path}: not found; every bundle needs configs/export_onnx.yaml")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    missing = [k for k in ("network_config", "onnx_path", "inputs", "outputs") if k not in cfg]
    if missing:
        raise ExportConfigError(f"{path}: missing keys {missing}")
    for spec in cfg["inputs"]:
        if not isinstance(spec, Mapping) or "name" not in spec or "shape" not in spec:
            raise ExportConfigError(f"{path}: each of `inputs` needs `name` and `shape`, got {spec!r}")
    cfg.setdefault("ckpt_path", None)
    cfg.setdefault("opset", 18)
    cfg.setdefault("wrapper", None)
    cfg.setdefault("dynamic_axes", {})
    cfg.setdefault("parity_shapes", [])
    cfg["tolerance"] = {**DEFAULT_TOLERANCE, **(cfg.get("tolerance") or {})}
    cfg.setdefault("exporter", "torchscript")
    return cfg


def build_bundle_network(
    bundle_root: str | os.PathLike,
    cfg: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """Instantiate ``network_def`` from the bundle config named by ``network_config``.

    The checkpoint (if given) is loaded into ``network_def``, then the ``wrapper`` (if any) is applied.

    The bundle root goes on ``sys.path`` first, so a bundle's own ``scripts`` package resolves the way
    ``monai.bundle run`` resolves it.
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root).resolve()
    cfg = cfg if cfg is not None else load_export_config(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / cfg["network_config"]))
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if checkpoint is not None:
        load_checkpoint_into(network, checkpoint)
    if cfg.get("wrapper"):
        network = _import_object(cfg["wrapper"])(network)
    return network


def load_checkpoint_into(network: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a bundle checkpoint (``weights_only=True``; plain state dict or ``{"model": ...}``) strictly."""
    from common.errors import InputDataError

    path = Path(checkpoint)
    if not path.is_file():
        raise InputDataError(path, "checkpoint not found (train the bundle or pass --ckpt_path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "network"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputDataError(path, f"does not fit the bundle's network_def: {str(e).splitlines()[0]}") from e


def export_bundle(
    bundle_root: str | os.PathLike,
    ckpt_path: str | os.PathLike | None = None,
    onnx_path: str | os.PathLike | None = None,
    allow_random_weights: bool = False,
    report_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Export a bundle's network as its ``configs/export_onnx.yaml`` describes, with the parity check.

    Args:
        bundle_root: the bundle folder.
        ckpt_path: weights to export (default: ``ckpt_path`` of export_onnx.yaml, relative to the bundle).
        onnx_path: the ``.onnx`` file (default: ``onnx_path`` of export_onnx.yaml, relative to the bundle).
        allow_random_weights: export the freshly initialised network when there is no checkpoint (for
            tests and for checking that a network exports at all); otherwise a missing checkpoint is an error.
        report_path: optional JSON file for the report (written atomically).

    Returns:
        the report of :func:`export_network`, plus ``checkpoint``.
    """
    from common.io.atomic import atomic_write_json

    root = Path(bundle_root)
    cfg = load_export_config(root)
    ckpt = ckpt_path if ckpt_path is not None else cfg.get("ckpt_path")
    # --ckpt_path is relative to the working directory, export_onnx.yaml's `ckpt_path` to the bundle
    weights = None if not ckpt else (Path(ckpt) if ckpt_path is not None else root / ckpt)
    if weights is not None and not weights.is_file() and allow_random_weights:
        weights = None
    if weights is None:
        logger.warning("exporting %s with randomly initialised weights (no checkpoint)", root.name)
    network = build_bundle_network(root, cfg, checkpoint=weights)
    out = Path(onnx_path) if onnx_path is not None else root / cfg["onnx_path"]
    report = export_network(
        network,
        out,
        inputs=cfg["inputs"],
        outputs=cfg["outputs"],
        opset=cfg["opset"],
        dynamic_axes=cfg["dynamic_axes"],
        parity_shapes=cfg["parity_shapes"],
        tolerance=cfg["tolerance"],
        exporter=cfg["exporter"],
    )
    report["checkpoint"] = None if weights is None else str(weights)
    if report_path:
        atomic_write_json(report_path, report)
    return report


def report_json(report: Mapping[str, Any]) -> str:
    """The report as one JSON document (for the CLI)."""
    return json.dumps(report, indent=2, default=str)
