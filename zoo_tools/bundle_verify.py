"""The checks every bundle of the zoo must pass (``scripts/verify_bundles.py``, ``tests/test_verify_bundles.py``).

:func:`verify_bundle` returns a list of problems (empty when the bundle is fine); each names the file
and what is wrong. Nothing here needs data, a GPU or the network: configs are parsed and their
references checked, but only ``network_def`` is instantiated (with random weights) to check its
input and output shapes against ``network_data_format``.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import json
import logging
import operator
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from zoo_tools import REPO

logger = logging.getLogger(__name__)

SCHEMA_PATH = REPO / "common" / "schemas" / "meta_schema.json"  # also given to `monai.bundle verify_metadata`

REQUIRED_FILES: tuple[str, ...] = (
    "LICENSE",
    "configs/metadata.json",
    "configs/train.yaml",
    "configs/evaluate.yaml",
    "configs/inference.yaml",
    "configs/inference_onnx.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/export_onnx.yaml",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
)

# config combinations run by the commands of docs/architecture.md (later files override earlier ones)
CONFIG_COMBOS: tuple[tuple[str, ...], ...] = (
    ("train.yaml",),
    ("train.yaml", "evaluate.yaml"),
    ("train.yaml", "multi_gpu_train.yaml"),
    ("inference.yaml",),
    ("inference.yaml", "inference_onnx.yaml"),
)

# workflow type -> configs that ConfigWorkflow.check_properties() must accept
PROPERTY_CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train", ("train.yaml",)),
    ("infer", ("inference.yaml",)),
    ("infer", ("inference.yaml", "inference_onnx.yaml")),
)

MODEL_CARD_SECTIONS: tuple[str, ...] = (
    "Overview",
    "Data",
    "Training",
    "Performance",
    "Commands",
    "Limitations",
    "References",
    "License",
)

# size used for a "*" spatial dimension of network_data_format
ANY_SIZE = 64

# config id (in export_onnx.yaml's network_config) of the network MONAI's bundle tools use
# (verify_net_in_out, ckpt_export) when network_def returns several tensors: the same network with one
# output, network_data_format's `pred` (MONAI's tools read only that output entry)
MONAI_TOOLS_NET_ID = "network_def_packed"

_REF = re.compile(r"@[\w#:]*\w|@#")
_ABS_PATH = re.compile(r"^(/(?!/)[^\s]*|[A-Za-z]:[\\/])")


@contextlib.contextmanager
def bundle_on_path(bundle_root: str | Path) -> Iterator[None]:
    """Put ``bundle_root`` first on ``sys.path`` (as ``monai.bundle run`` does) for the block.

    A bundle's own ``scripts`` package is imported from this bundle, not from one imported earlier in
    the same process, and is dropped from ``sys.modules`` afterwards.
    """
    root = str(Path(bundle_root).resolve())

    def _drop_bundle_modules() -> None:
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]

    _drop_bundle_modules()
    sys.path.insert(0, root)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        _drop_bundle_modules()


# --------------------------------------------------------------------------------------------- metadata
def load_schema() -> dict:
    """The metadata schema kept in the repository (``common/schemas/meta_schema.json``)."""
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def check_metadata(metadata_file: str | Path) -> list[str]:
    """Validate ``metadata.json`` against the schema (offline) and check that ``version`` is in ``changelog``."""
    import jsonschema

    path = Path(metadata_file)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return [f"{path}: not valid JSON ({e})"]
    problems = []
    validator = jsonschema.Draft201909Validator(load_schema())
    for err in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"{path}: {where}: {err.message}")
    version, changelog = meta.get("version"), meta.get("changelog")
    if isinstance(changelog, Mapping) and version not in changelog:
        problems.append(f"{path}: version {version!r} is not a key of changelog {sorted(changelog)}")
    return problems


# ---------------------------------------------------------------------------------------------- configs
def _walk(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(config, Mapping):
        for k, v in config.items():
            yield from _walk(v, f"{prefix}#{k}" if prefix else str(k))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from _walk(v, f"{prefix}#{i}" if prefix else str(i))
    else:
        yield prefix, config


def check_expression(expr: str) -> str | None:
    """Return a syntax error message for a ``$...`` config expression, or None when it compiles."""
    code = _REF.sub("_ref", expr[1:]).strip()
    mode = "exec" if code.startswith(("import ", "from ")) else "eval"
    try:
        compile(code, "<config>", mode)
    except SyntaxError as e:
        return f"{e.msg} in {expr!r}"
    return None


def check_config_file(path: Path) -> list[str]:
    """A config file parses; its expressions compile; it holds no absolute paths."""
    from monai.bundle import ConfigParser

    try:
        config = ConfigParser.load_config_file(str(path))
    except Exception as e:
        return [f"{path}: does not parse ({type(e).__name__}: {e})"]
    if not isinstance(config, Mapping):
        return [f"{path}: top level must be a mapping of ids, got {type(config).__name__}"]
    problems = []
    for item_id, value in _walk(config):
        if not isinstance(value, str):
            continue
        if value.startswith("$"):
            err = check_expression(value)
            if err:
                problems.append(f"{path}: {item_id}: {err}")
        elif _ABS_PATH.match(value):
            problems.append(f"{path}: {item_id}: absolute path {value!r}; make it relative to @bundle_root")
    return problems


def _bound_by_import(code: str) -> set[str]:
    """Names a config ``$import`` binds, the way MONAI's ConfigExpression binds them.

    MONAI binds ``import a.b`` to the name ``"a.b"`` (not ``a``), ``import a.b as c`` to ``c`` and
    ``from a import b`` to ``b``.
    """
    names: set[str] = set()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return names
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.names:
            alias = node.names[0]  # MONAI ignores further aliases of one statement
            names.add(alias.asname or alias.name)
    return names


def _free_names(code: str) -> set[str]:
    """Names an expression reads that it does not bind itself (comprehension variables, lambda arguments)."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return set()
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound


def check_expression_names(config: Any, name: str) -> list[str]:
    """Every global name an expression uses is a builtin, one of MONAI's default globals or imported."""
    import builtins

    from monai.bundle.config_parser import ConfigParser

    strings = [(i, v) for i, v in _walk(config) if isinstance(v, str) and v.startswith("$")]
    imported = set().union(*(_bound_by_import(v[1:]) for _, v in strings if v[1:].lstrip().startswith(("import ", "from "))))
    known = imported | set(dir(builtins)) | set(getattr(ConfigParser, "suffixes", ())) | {"monai", "torch", "np", "numpy", "_ref"}
    modules = _imported_modules([v[1:] for _, v in strings if v[1:].lstrip().startswith(("import ", "from "))])
    problems = []
    for item_id, value in strings:
        code = _REF.sub("_ref", value[1:]).strip()
        if code.startswith(("import ", "from ")):
            continue
        for missing in sorted(_free_names(code) - known):
            dotted = sorted(n for n in imported if n.startswith(missing + "."))
            hint = f" (MONAI binds `import {dotted[0]}` to the name {dotted[0]!r}: add `$import {missing}`)" if dotted else ""
            problems.append(f"{name}: {item_id}: expression uses {missing!r}, which no `$import` defines{hint}")
        for chain in _attribute_chains(code):
            err = _resolve_module_chain(chain, modules)
            if err:
                problems.append(f"{name}: {item_id}: {err}")
    return problems


def _imported_modules(import_codes: Sequence[str]) -> dict[str, Any]:
    """Run the config's ``$import`` statements the way MONAI does; name -> module (failures skipped)."""
    from monai.utils import optional_import

    modules: dict[str, Any] = {}
    for code in import_codes:
        try:
            node = ast.parse(code.strip()).body[0]
        except (SyntaxError, IndexError):
            continue
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or not node.names:
            continue
        alias = node.names[0]
        if isinstance(node, ast.ImportFrom):
            obj, ok = optional_import(str(node.module), name=alias.name)
        else:
            obj, ok = optional_import(alias.name)
        if ok:
            modules[alias.asname or alias.name] = obj
    return modules


def _attribute_chains(code: str) -> list[list[str]]:
    """Dotted name chains (``common.bundle_utils.freeze`` -> ["common", "bundle_utils", "freeze"])."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return []
    chains, inner = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                inner.add(id(cur))
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                chains.append([cur.id, *reversed(parts)])
    return chains


def _resolve_module_chain(chain: list[str], modules: Mapping[str, Any]) -> str | None:
    """An error when a chain walks into a submodule that no import loaded (``common.bundle_utils``
    after only ``$import common``); attributes of non-modules are not checked (they may be dynamic)."""
    import types

    obj = modules.get(chain[0])
    if not isinstance(obj, types.ModuleType):
        return None
    for depth, attr in enumerate(chain[1:], start=1):
        if not isinstance(obj, types.ModuleType):
            return None
        if not hasattr(obj, attr):
            dotted = ".".join(chain[: depth + 1])
            return f"{'.'.join(chain)}: module {'.'.join(chain[:depth])!r} has no attribute {attr!r} (add `$import {dotted}` to `imports` if it is a submodule)"
        obj = getattr(obj, attr)
    return None


def check_config_combo(configs_dir: Path, files: Sequence[str]) -> list[str]:
    """The merged configs resolve: macros expand, every ``@id`` reference exists, every ``_target_`` imports.

    Nothing is instantiated and no expression is evaluated.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.config_item import ConfigComponent
    from monai.bundle.reference_resolver import ReferenceResolver

    name = " + ".join(files)
    parser = ConfigParser()
    try:
        parser.read_config([str(configs_dir / f) for f in files])
        parser.parse(reset=True)
    except Exception as e:
        return [f"{configs_dir}: {name}: does not resolve ({type(e).__name__}: {e})"]
    problems = [f"{configs_dir}: {p}" for p in check_expression_names(parser.get(), name)]
    refs = ReferenceResolver.find_refs_in_config(parser.get(), id="")
    for ref in sorted(refs):
        if ref not in parser:
            problems.append(f"{configs_dir}: {name}: reference @{ref.replace('::', '#')} names no id")
    for item_id, item in parser.ref_resolver.items.items():
        if not isinstance(item, ConfigComponent) or item.is_disabled():
            continue
        target = item.get_config().get("_target_")
        if not isinstance(target, str) or target.startswith("$"):
            continue
        try:
            module_name = item.resolve_module_name()
            from pydoc import locate

            if locate(module_name) is None:
                raise ImportError(module_name)
        except Exception as e:
            problems.append(
                f"{configs_dir}: {name}: {item_id.replace('::', '#')}: _target_ {target!r} cannot be imported "
                f"({type(e).__name__}: {e})"
            )
    return problems


class _PropertyIdWorkflow:
    """Builds a ``ConfigWorkflow`` whose properties are looked up by id instead of instantiated.

    ``ConfigWorkflow.check_properties()`` tests each property with ``hasattr``, which instantiates it:
    the trainer, its data loaders and their datasets, which needs the user's data. Here a property
    "exists" when its config id exists; everything else (which properties are required, the check that
    optional properties are referenced by their standard ids) is MONAI's own code.
    """

    @staticmethod
    def make(config_files: Sequence[str], meta_file: str, workflow_type: str):
        from monai.bundle import ConfigWorkflow
        from monai.bundle.utils import ID_SEP_KEY

        class PropertyIdWorkflow(ConfigWorkflow):
            def _get_property(self, name: str, property: dict) -> Any:
                prop_id = property["id"]
                if prop_id not in self.parser:
                    if property.get("required", False):
                        raise AttributeError(f"property {name!r}: id {prop_id.replace(ID_SEP_KEY, '#')} missing")
                    return None
                return self.parser.get(prop_id)

        wf = PropertyIdWorkflow(
            config_file=list(config_files), meta_file=meta_file, logging_file=False, workflow_type=workflow_type
        )
        # what initialize() does, minus running the `initialize` expressions: expand macros, normalise ids
        wf.parser.parse(reset=True)
        wf._is_initialized = True
        return wf


def check_properties(configs_dir: Path, files: Sequence[str], workflow_type: str) -> list[str]:
    """``ConfigWorkflow(...).check_properties()`` for ``workflow_type`` ("train" or "infer") has nothing missing."""
    name = " + ".join(files)
    monai_logger = logging.getLogger("monai.bundle.workflows")
    level = monai_logger.level
    monai_logger.setLevel(logging.ERROR)  # its warnings repeat what we report
    try:
        wf = _PropertyIdWorkflow.make(
            [str(configs_dir / f) for f in files], str(configs_dir / "metadata.json"), workflow_type
        )
        missing = wf.check_properties()
    except Exception as e:
        return [f"{configs_dir}: {name}: ConfigWorkflow({workflow_type!r}) failed ({type(e).__name__}: {e})"]
    finally:
        monai_logger.setLevel(level)
    if missing:
        return [
            f"{configs_dir}: {name}: {workflow_type} workflow properties missing or not referenced by their "
            f"standard id: {missing} (see monai.bundle.properties)"
        ]
    return []


# ------------------------------------------------------------------------------------------ network I/O
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}


def eval_size(expr: int | str, variables: Mapping[str, int]) -> int | None:
    """Evaluate one ``spatial_shape`` entry: an int, ``"*"`` (None: any size) or e.g. ``"16*n"``, ``"2**p"``."""
    if isinstance(expr, int):
        return expr
    text = str(expr).strip()
    if text == "*":
        return None

    def _eval(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return _eval(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return int(variables.get(node.id, 1))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
        raise ValueError(f"unsupported spatial_shape expression {text!r}")

    return int(_eval(ast.parse(text, mode="eval")))


def _smallest_shape(shape: Sequence[int | str], min_size: int = 1) -> tuple[list[int], dict[str, int]]:
    """Spatial sizes for a fake input: each variable the smallest value >= 1 giving every size >= min_size."""
    names = sorted({n.id for e in shape if isinstance(e, str) and e.strip() != "*" for n in ast.walk(ast.parse(e, mode="eval")) if isinstance(n, ast.Name)})
    variables = dict.fromkeys(names, 1)
    for _ in range(64):
        sizes = [eval_size(e, variables) for e in shape]
        if all(s is None or s >= min_size for s in sizes):
            break
        variables = {k: v + 1 for k, v in variables.items()}
    sizes = [ANY_SIZE if s is None else s for s in (eval_size(e, variables) for e in shape)]
    return sizes, variables


def _monai_tools_output(bundle_root: Path, cfg: Mapping[str, Any], image: Any) -> Any:
    """The output of ``MONAI_TOOLS_NET_ID`` for ``image`` (random weights), or None when the config has no such id.

    Like MONAI's ``verify_net_in_out``, the network gets the first input only.
    """
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root).resolve() / "configs" / cfg["network_config"]))
    if MONAI_TOOLS_NET_ID not in parser:
        return None
    parser["bundle_root"] = str(Path(bundle_root).resolve())
    network = parser.get_parsed_content(MONAI_TOOLS_NET_ID, instantiate=True).eval()
    with torch.no_grad():
        return network(image)


def check_network_io(bundle_root: Path) -> list[str]:
    """Instantiate ``network_def`` (from export_onnx.yaml's ``network_config``, wrapped by its ``wrapper``),
    feed zeros shaped as ``network_data_format.inputs`` and compare the outputs with ``.outputs``.

    A tuple of outputs is named by export_onnx.yaml's ``outputs``. An output ``pred`` that the exported
    network does not return is checked on ``MONAI_TOOLS_NET_ID`` (the one-tensor network MONAI's
    ``verify_net_in_out`` and ``ckpt_export`` use), fed with the first input as MONAI feeds it."""
    import torch

    from common.export.onnx_export import build_bundle_network, load_export_config

    meta_path = bundle_root / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
        fmt = meta["network_data_format"]
        inputs, outputs = dict(fmt["inputs"]), dict(fmt["outputs"])
    except Exception as e:
        return [f"{meta_path}: network_data_format unreadable ({type(e).__name__}: {e})"]
    try:
        cfg = load_export_config(bundle_root)
        with bundle_on_path(bundle_root):
            network = build_bundle_network(bundle_root, cfg).eval()
    except Exception as e:
        return [f"{bundle_root}: network_def cannot be instantiated ({type(e).__name__}: {e})"]

    feeds, variables = [], {}
    for spec in inputs.values():
        if not isinstance(spec, Mapping):  # a scalar argument
            feeds.append(spec)
            continue
        sizes, vars_ = _smallest_shape(spec.get("spatial_shape", []))
        variables.update(vars_)
        dtype = getattr(torch, str(spec.get("dtype", "float32")), torch.float32)
        feeds.append(torch.zeros([1, int(spec["num_channels"]), *sizes], dtype=dtype))
    try:
        with torch.no_grad():
            result = network(*feeds)
    except Exception as e:
        shapes = [tuple(f.shape) for f in feeds if hasattr(f, "shape")]
        return [f"{bundle_root}: network_def fails on zeros of shape {shapes} from network_data_format ({type(e).__name__}: {e})"]

    # the exported network's outputs carry export_onnx.yaml's names (those of the ONNX graph)
    names = [str(n) for n in cfg.get("outputs") or outputs]
    if isinstance(result, torch.Tensor):
        got = {names[0]: result} if len(names) == 1 else {"<single tensor>": result}
    elif isinstance(result, Mapping):
        got = dict(result)
    elif isinstance(result, (tuple, list)):
        got = dict(zip(names, result))
        if len(result) != len(names):
            return [f"{bundle_root}: network returns {len(result)} outputs, export_onnx.yaml names {len(names)}"]
    else:
        return [f"{bundle_root}: network returns {type(result).__name__}; expected tensor, tuple or dict"]

    problems = []
    if "pred" in outputs and "pred" not in got and feeds:
        try:
            pred = _monai_tools_output(bundle_root, cfg, feeds[0])
        except Exception as e:
            pred = None
            problems.append(f"{bundle_root}: {MONAI_TOOLS_NET_ID} fails on zeros from network_data_format ({type(e).__name__}: {e})")
        if pred is not None:
            got["pred"] = pred
    for name, spec in outputs.items():
        if name not in got:
            hint = f"; define {MONAI_TOOLS_NET_ID} in {cfg['network_config']} for MONAI's tools" if name == "pred" else ""
            problems.append(f"{meta_path}: output {name!r} of network_data_format not returned (got {list(got)}){hint}")
            continue
        if not isinstance(spec, Mapping):
            continue
        tensor = got[name]
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{meta_path}: output {name!r} is a {type(tensor).__name__}, not a tensor")
            continue
        shape = tuple(tensor.shape)
        if len(shape) < 2 or shape[1] != int(spec["num_channels"]):
            problems.append(
                f"{meta_path}: output {name!r} has shape {shape}, expected {spec['num_channels']} channels (dim 1)"
            )
            continue
        expected = [eval_size(e, variables) for e in spec.get("spatial_shape", [])]
        if len(shape) - 2 != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape[2:])):
            problems.append(
                f"{meta_path}: output {name!r} has spatial shape {list(shape[2:])}, network_data_format says "
                f"{spec.get('spatial_shape')} (= {expected} for {variables or 'no variables'})"
            )
    return problems


# ------------------------------------------------------------------------------------ the config contract
# one id for one thing in every bundle (docs/architecture.md, "The config contract"): names other bundles or
# MONAI's model-zoo use for the same thing, and the id this zoo uses instead
ID_ALIASES: dict[str, str] = {
    "checkpoint": "ckpt_path", "ckpt": "ckpt_path", "checkpoint_path": "ckpt_path", "model_path": "ckpt_path",
    "onnx_model": "onnx_path", "onnx_file": "onnx_path", "output": "onnx_path",
    "data_dir": "dataset_dir", "data_root": "dataset_dir", "data_path": "dataset_dir",
    "out_dir": "output_dir", "output_path": "output_dir",
    "datalist_file": "datalist", "data_list_file_path": "datalist", "datalist_path": "datalist",
    "hu_min": "hu_window", "hu_max": "hu_window", "hu_range": "hu_window",
    "seed": "split_seed", "random_seed": "split_seed",
    "img_size": "image_size", "input_size": "image_size",
}
# ids each run config defines
REQUIRED_IDS: dict[str, tuple[str, ...]] = {
    "train.yaml": ("bundle_root", "dataset_dir", "output_dir", "ckpt_dir", "initial_ckpt", "device", "network_def",
                   "network"),
    "inference.yaml": ("bundle_root", "dataset_dir", "output_dir", "ckpt_path", "load_pretrain", "device",
                       "network_def", "network", "checkpointloader", "initialize"),
    "export_onnx.yaml": ("network_config", "ckpt_path", "onnx_path"),
}
# inference_onnx.yaml swaps the network for an ONNX Runtime session and nothing else
ONNX_OVERRIDE_IDS = ("onnx_path", "load_pretrain", "network")


def _yaml_ids(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}  # reported by check_config_file
    return config if isinstance(config, dict) else {}


def check_contract(configs_dir: Path) -> list[str]:
    """The bundle's configs keep the zoo's config contract (the rules of ``docs/architecture.md``).

    * no top-level id from ``ID_ALIASES`` (the zoo's id for that thing is used instead);
    * ``train.yaml``, ``inference.yaml`` and ``export_onnx.yaml`` define the ids of ``REQUIRED_IDS``;
    * ``inference.yaml`` loads the weights in ``initialize`` through ``checkpointloader`` (a
      ``CheckpointLoader`` disabled by ``load_pretrain``), not in ``handlers``;
    * ``inference_onnx.yaml`` defines exactly ``onnx_path``, ``load_pretrain: false`` and a ``network`` that
      reads ``@onnx_path``;
    * ``multi_gpu_train.yaml`` takes the GPU from ``LOCAL_RANK`` (the global rank names a GPU of another node).

    Args:
        configs_dir: the bundle's ``configs`` folder.

    Returns:
        the broken rules, each naming the file and the id.
    """
    problems: list[str] = []
    configs = {p.name: _yaml_ids(p) for p in sorted(configs_dir.glob("*.yaml"))}
    for name, config in configs.items():
        for key in config:
            base = str(key).split("#")[0]
            if base in ID_ALIASES and not (name == "inference_onnx.yaml" and base in ONNX_OVERRIDE_IDS):
                problems.append(f"{configs_dir / name}: id {base!r}: the zoo's id for this is {ID_ALIASES[base]!r}")
    for name, required in REQUIRED_IDS.items():
        if name in configs:
            missing = [k for k in required if k not in configs[name]]
            if missing:
                problems.append(f"{configs_dir / name}: lacks the contract's ids {missing}")

    inference = configs.get("inference.yaml", {})
    loader = inference.get("checkpointloader")
    if isinstance(loader, Mapping):
        if not str(loader.get("_target_", "")).endswith("CheckpointLoader"):
            problems.append(f"{configs_dir / 'inference.yaml'}: checkpointloader is not a CheckpointLoader")
        if "@load_pretrain" not in str(loader.get("_disabled_", "")):
            problems.append(f"{configs_dir / 'inference.yaml'}: checkpointloader needs `_disabled_: \"$not common.bundle_utils.flag(@load_pretrain)\"`")
        if not any("@checkpointloader(" in str(x) for x in inference.get("initialize") or []):
            problems.append(f"{configs_dir / 'inference.yaml'}: `initialize` never calls @checkpointloader(@evaluator)")
    for h in inference.get("handlers") or []:
        if isinstance(h, Mapping) and "CheckpointLoader" in str(h.get("_target_", "")):
            problems.append(f"{configs_dir / 'inference.yaml'}: a CheckpointLoader in `handlers`; weights load in "
                            "`initialize` (checkpointloader), so inference_onnx.yaml only swaps the network")
    for name in ("explain.yaml",):
        for h in configs.get(name, {}).get("handlers") or []:
            if isinstance(h, Mapping) and "CheckpointLoader" in str(h.get("_target_", "")):
                problems.append(f"{configs_dir / name}: a CheckpointLoader in `handlers` loads the weights twice")

    if "inference_onnx.yaml" in configs:
        onnx = configs["inference_onnx.yaml"]
        path = configs_dir / "inference_onnx.yaml"
        extra = sorted(set(onnx) - set(ONNX_OVERRIDE_IDS))
        missing = [k for k in ONNX_OVERRIDE_IDS if k not in onnx]
        if extra:
            problems.append(f"{path}: overrides {extra}; it may only set {list(ONNX_OVERRIDE_IDS)}")
        if missing:
            problems.append(f"{path}: lacks {missing}")
        if onnx.get("load_pretrain", False) is not False:
            problems.append(f"{path}: load_pretrain must be false (an ONNX session takes no PyTorch weights)")
        if "network" in onnx and "@onnx_path" not in json.dumps(onnx["network"]):
            problems.append(f"{path}: network does not read @onnx_path")

    if "multi_gpu_train.yaml" in configs:
        device = str(configs["multi_gpu_train.yaml"].get("device", ""))
        if "LOCAL_RANK" not in device or "get_rank()" in device:
            problems.append(f"{configs_dir / 'multi_gpu_train.yaml'}: device must come from os.environ['LOCAL_RANK'] "
                            f"(got {device!r})")
    return problems


def check_required_packages(root: Path) -> list[str]:
    """``metadata.json`` names every package the bundle's code imports, at the version installed here.

    The packages are those of ``zoo_tools.packaging.tested_requirements`` (the archive's requirements.txt);
    torch, MONAI and numpy have their own fields (``pytorch_version``, ``monai_version``, ``numpy_version``).
    """
    from zoo_tools.packaging import CORE_PACKAGES, tested_requirements

    meta_file = root / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        needed = tested_requirements(root)
    except Exception as e:  # unreadable metadata is reported by check_metadata
        return [f"{meta_file}: required packages cannot be worked out ({type(e).__name__}: {e})"]
    declared = {k.lower(): v for k, v in (meta.get("required_packages_version") or {}).items()}
    fields = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
    problems = []
    for dist, version in needed.items():
        have = meta.get(fields[dist]) if dist in CORE_PACKAGES else declared.get(dist)
        where = fields[dist] if dist in CORE_PACKAGES else "required_packages_version"
        if have is None:
            problems.append(f"{meta_file}: {where} lacks {dist!r} (the bundle's code imports it; tested with {version})")
        elif str(have) != version:
            problems.append(f"{meta_file}: {where} says {dist} {have}, the tests ran with {version}")
    return problems


# ------------------------------------------------------------------------------------ docs and logging
def check_model_card(readme: Path) -> list[str]:
    """The model card has a heading for each of ``MODEL_CARD_SECTIONS`` (a heading may add words after it)."""
    text = readme.read_text(encoding="utf-8")
    headings = [h.strip().lower() for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE)]
    missing = [s for s in MODEL_CARD_SECTIONS if not any(h.startswith(s.lower()) for h in headings)]
    return [f"{readme}: model card lacks the sections {missing}"] if missing else []


def check_logging_conf(path: Path) -> list[str]:
    """``logging.conf`` is a fileConfig file that ``monai.bundle run --logging_file`` accepts.

    MONAI 1.6 only applies logging files whose handler/formatter classes come from ``logging`` or
    ``logging.handlers``; patient identifiers are removed by ``import common`` (see
    ``common.logging_utils``), which :func:`check_phi_redaction` checks the configs trigger.
    """
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
        handlers = [h.strip() for h in parser["handlers"]["keys"].split(",") if h.strip()]
        root_handlers = parser["logger_root"].get("handlers", "")
    except Exception as e:
        return [f"{path}: not a logging fileConfig file ({type(e).__name__}: {e})"]
    problems = []
    if not handlers or not root_handlers.strip():
        problems.append(f"{path}: no handler on the root logger; copy common/resources/logging.conf")
    try:
        from monai.bundle.workflows import _reject_executable_logging_config
    except ImportError:  # an older MONAI without the check
        return problems
    try:
        _reject_executable_logging_config(str(path))
    except ValueError as e:
        problems.append(f"{path}: monai.bundle run would refuse it: {e}")
    return problems


def check_phi_redaction(configs_dir: Path) -> list[str]:
    """The train and inference configs import ``common``, which switches on PHI redaction in logs."""
    problems = []
    for name in ("train.yaml", "inference.yaml"):
        path = configs_dir / name
        if path.is_file() and not re.search(r"\bcommon\.|import common\b", path.read_text(encoding="utf-8")):
            problems.append(
                f"{path}: never imports `common`, so patient identifiers are not redacted from logs; add "
                "`$import common` to `imports`"
            )
    return problems


# ----------------------------------------------------------------------------------------------- bundle
def check_weights(bundle_root: Path, max_bytes: int = 25 * 1024 * 1024) -> list[str]:
    """Shipped weights: the file ``metadata.json``'s ``weights`` entry names exists, is at most
    ``max_bytes`` (model-zoo's limit) and has the recorded sha256 and size; every file
    ``large_files.yml`` lists has its recorded hash. A bundle that ships no weights has no entry."""
    from common.bundle_utils import sha256_file

    problems: list[str] = []
    meta_file = bundle_root / "configs" / "metadata.json"
    try:
        weights = json.loads(meta_file.read_text()).get("weights")
    except (OSError, json.JSONDecodeError):
        return problems  # check_metadata reports it
    hashes: dict[str, str] = {}
    if weights:
        path = bundle_root / weights.get("file", "models/model.pt")
        if not path.is_file():
            problems.append(f"{path}: shipped weights missing (metadata.json records sha256 {weights.get('sha256')})")
        else:
            hashes[str(path)] = sha256_file(path)
            if hashes[str(path)] != weights.get("sha256"):
                problems.append(f"{path}: sha256 {hashes[str(path)]} differs from metadata.json's {weights.get('sha256')}")
            if path.stat().st_size != weights.get("size_bytes", path.stat().st_size):
                problems.append(f"{path}: {path.stat().st_size} bytes, metadata.json says {weights.get('size_bytes')}")
            if path.stat().st_size > max_bytes:
                problems.append(f"{path}: {path.stat().st_size} bytes, over the {max_bytes}-byte limit")
    large = bundle_root / "large_files.yml"
    if large.is_file():
        try:
            entries = (yaml.safe_load(large.read_text()) or {}).get("large_files", [])
        except yaml.YAMLError as e:
            return problems + [f"{large}: not valid YAML ({e})"]
        for entry in entries:
            path = bundle_root / str(entry.get("path", ""))
            if entry.get("hash_type", "sha256") != "sha256" or not path.is_file():
                problems.append(f"{large}: {entry.get('path')!r} is missing or has no sha256 hash_type")
                continue
            digest = hashes.get(str(path)) or sha256_file(path)
            if digest != entry.get("hash_val"):
                problems.append(f"{large}: {entry.get('path')} hash_val differs from the file's sha256 {digest}")
    elif weights:
        problems.append(f"{large}: missing (the bundle ships {weights.get('file')})")
    return problems


def verify_bundle(path: str | Path, check_network: bool = True) -> list[str]:
    """Run every check on one bundle folder.

    Args:
        path: the bundle folder (``bundles/<name>``).
        check_network: instantiate ``network_def`` and check its I/O shapes (the slowest check).

    Returns:
        the problems found, each naming the file; empty when the bundle passes.
    """
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: not a folder"]
    problems = [f"{root / f}: required file missing" for f in REQUIRED_FILES if not (root / f).is_file()]
    configs = root / "configs"

    if (configs / "metadata.json").is_file():
        problems += check_metadata(configs / "metadata.json")
    present = {p.name for p in configs.glob("*.yaml")} | {p.name for p in configs.glob("*.json")} - {"metadata.json"}
    parse_problems = []
    for name in sorted(present):
        parse_problems += check_config_file(configs / name)
    problems += parse_problems
    broken = {p.split(":")[0] for p in parse_problems}
    with bundle_on_path(root):
        for combo in CONFIG_COMBOS:
            if all(f in present for f in combo) and not any(str(configs / f) in broken for f in combo):
                problems += check_config_combo(configs, combo)
        if (configs / "metadata.json").is_file():
            for workflow_type, combo in PROPERTY_CHECKS:
                if all(f in present for f in combo):
                    problems += check_properties(configs, combo, workflow_type)
    if (configs / "export_onnx.yaml").is_file():
        from common.export.onnx_export import load_export_config

        try:
            cfg = load_export_config(root)
            if not (configs / cfg["network_config"]).is_file():
                problems.append(f"{configs / 'export_onnx.yaml'}: network_config {cfg['network_config']!r} not found")
        except Exception as e:
            problems.append(str(e))
    if (configs / "logging.conf").is_file():
        problems += check_logging_conf(configs / "logging.conf")
    problems += check_contract(configs)
    if (configs / "metadata.json").is_file():
        problems += check_required_packages(root)
    problems += check_phi_redaction(configs)
    problems += check_weights(root)
    if (root / "docs" / "README.md").is_file():
        problems += check_model_card(root / "docs" / "README.md")
    if check_network and (configs / "metadata.json").is_file() and (configs / "export_onnx.yaml").is_file():
        problems += check_network_io(root)
    return problems


def find_bundles(bundles_dir: str | Path = "bundles") -> list[Path]:
    """Every bundle folder under ``bundles_dir`` (folders not starting with ``.`` or ``_``)."""
    folder = Path(bundles_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
