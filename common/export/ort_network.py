"""An ONNX Runtime session that MONAI inferers can call like the PyTorch network it was exported from."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# ONNX tensor element types (as ONNX Runtime names them) -> NumPy dtypes, so that inputs are cast to what
# the graph expects (a float64 tensor from a transform must not make the session fail).
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def default_providers() -> list[str]:
    """The execution providers to use when none are given: CUDA when this ONNX Runtime has it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


class OnnxRuntimeNetwork(torch.nn.Module):
    """Run an exported ``.onnx`` model where a bundle config expects its PyTorch ``network``.

    The forward pass takes the same tensors as the PyTorch network (positionally in the graph's input
    order, or by input name as keyword arguments) and returns a ``torch.Tensor`` on the device of the
    first input: one tensor when one output is selected, else a tuple in ``output_names`` order. This is
    what ``monai.inferers`` (``SimpleInferer``, ``SlidingWindowInferer``, ...) and the evaluators expect,
    so a bundle's ``inference_onnx.yaml`` only replaces ``network`` and keeps its pre/post-processing.

    It is a ``torch.nn.Module`` without parameters: ``.eval()``, ``.train()``, ``.to()`` and
    ``.parameters()`` work and change nothing. Gradients do not flow through it.

    Args:
        model_path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers in order of preference; default CUDA (if this
            onnxruntime build has it), then CPU.
        input_names: graph inputs in the order ``forward`` receives them positionally; default the
            graph's own input order.
        output_names: graph outputs to return, in this order; default all, in graph order.
        intra_op_num_threads: threads ONNX Runtime uses inside one operator (default: its own choice).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        intra_op_num_threads: int | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"{self.model_path}: ONNX model not found; export it first with "
                "`python scripts/export_onnx.py --bundle <bundle folder>`"
            )
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        self.providers = list(providers) if providers else default_providers()
        self.session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=self.providers)
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        graph_outputs = [o.name for o in self.session.get_outputs()]
        self.input_names = list(input_names) if input_names else list(graph_inputs)
        unknown = [n for n in self.input_names if n not in graph_inputs]
        if unknown:
            raise ValueError(f"{self.model_path}: no graph inputs named {unknown}; the graph has {list(graph_inputs)}")
        self.output_names = list(output_names) if output_names else graph_outputs
        unknown = [n for n in self.output_names if n not in graph_outputs]
        if unknown:
            raise ValueError(f"{self.model_path}: no graph outputs named {unknown}; the graph has {graph_outputs}")
        self._input_dtypes = {n: _ORT_TO_NUMPY.get(graph_inputs[n].type) for n in self.input_names}
        logger.info("ONNX Runtime session for %s on %s", self.model_path.name, self.session.get_providers())

    def extra_repr(self) -> str:
        return f"model_path={str(self.model_path)!r}, inputs={self.input_names}, outputs={self.output_names}"

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            # MetaTensor -> plain tensor, so no metadata handling runs on the way to NumPy
            array = value.as_tensor() if hasattr(value, "as_tensor") else value
            array = array.detach().cpu().numpy()
        else:
            array = np.asarray(value)
        expected = self._input_dtypes.get(name)
        if expected is not None and array.dtype != expected:
            array = array.astype(expected)
        return np.ascontiguousarray(array)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the session on ``args`` (graph input order) and ``kwargs`` (by input name)."""
        if len(args) > len(self.input_names):
            raise TypeError(f"{self.model_path.name} takes {len(self.input_names)} inputs, got {len(args)}")
        feeds = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self.input_names:
                raise TypeError(f"{self.model_path.name} has no input named {name!r} (inputs: {self.input_names})")
            feeds[name] = value
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise TypeError(f"{self.model_path.name}: missing inputs {missing}")
        first = next((v for v in feeds.values() if isinstance(v, torch.Tensor)), None)
        device = first.device if first is not None else torch.device("cpu")
        results = self.session.run(self.output_names, {n: self._to_numpy(n, v) for n, v in feeds.items()})
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(r)).to(device) for r in results)
        return tensors[0] if len(tensors) == 1 else tensors
