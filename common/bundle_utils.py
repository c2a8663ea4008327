"""Helpers bundle configs call: fine-tuning from an initial checkpoint, guarding shipped weights, freezing layers."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.handlers import CheckpointLoader

from common.data.skip_bad import skipped_cases
from common.errors import InputDataError, NothingWritten, WeightsUnavailable

logger = logging.getLogger(__name__)

# keys under which trainers (MONAI CheckpointSaver, Lightning, plain scripts) store the model weights
_STATE_KEYS = ("model", "state_dict", "network", "net")


def flag(value: bool | int | str) -> bool:
    """A config switch as a bool, whether it came from YAML (``true``) or the command line (``--x false``).

    ``python -m monai.bundle run --x false`` hands the config the *string* ``"false"``, which Python counts as
    true; every ``_disabled_: $not ...`` of a switch goes through this.

    Args:
        value: a bool, 0/1, or one of true/false/yes/no/on/off/1/0 (any case).

    Returns:
        the switch's value.

    Raises:
        ValueError: anything else (the message quotes it).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"a switch takes true or false, got {value!r}")


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    # DistributedDataParallel / DataParallel keep the real network in `.module`
    return network.module if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else network


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's weights (``torch.load(weights_only=True)``), whatever container holds them.

    Accepts a plain state dict, ``{"model": state_dict}``, ``{"state_dict": ...}``, ``{"network": ...}``,
    and strips a ``module.`` prefix (weights saved from DistributedDataParallel).

    Raises:
        InputDataError: the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "initial checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, non-weights objects refused by weights_only
        raise InputDataError(path, f"cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise InputDataError(path, f"holds a {type(obj).__name__}, not a state dict")
    state = {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InputDataError(path, "holds no tensors")
    return state


def load_initial_weights(
    network: torch.nn.Module, path: str | os.PathLike | None, min_matched_fraction: float = 0.5
) -> torch.nn.Module:
    """Load the weights of ``path`` whose name and shape match ``network``; leave the rest as initialised.

    This is how a bundle fine-tunes: a head trained for another number of classes has another shape,
    so it keeps its fresh initialisation while the backbone is loaded. Everything not loaded is logged.

    Args:
        network: the freshly built network (possibly already on its device).
        path: checkpoint file; ``""`` or ``None`` does nothing (train from scratch).
        min_matched_fraction: refuse a checkpoint that fills less than this fraction of the network's
            tensors: it was almost certainly made for another network.

    Returns:
        ``network`` (so a config can write ``network: "$common.bundle_utils.load_initial_weights(...)"``).

    Raises:
        InputDataError: the checkpoint is missing, unreadable, or fits too little of the network.
    """
    if path is None or str(path) == "":
        return network
    target = _unwrap(network)
    state = read_state_dict(path)
    own = target.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reinitialised = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    if len(matched) < min_matched_fraction * len(own):
        raise InputDataError(
            path,
            f"fits only {len(matched)} of the network's {len(own)} tensors (by name and shape); "
            "it was made for another network",
        )
    target.load_state_dict(matched, strict=False)
    logger.info("initial weights from %s: loaded %d of %d tensors", Path(path).name, len(matched), len(own))
    for key in reinitialised:
        logger.warning(
            "re-initialised %s: checkpoint shape %s, network shape %s",
            key, tuple(state[key].shape), tuple(own[key].shape),
        )
    if missing:
        logger.warning("not in the checkpoint, left as initialised: %s", ", ".join(missing))
    if unexpected:
        logger.warning("in the checkpoint but not in the network, ignored: %s", ", ".join(unexpected))
    return network


def check_checkpoint_dir(
    ckpt_dir: str | os.PathLike,
    initial_ckpt: str | os.PathLike | None = "",
    filenames: Sequence[str] = ("model.pt", "model_final.pt"),
    protected: Sequence[str | os.PathLike] = (),
) -> str:
    """Refuse a training whose checkpoints would overwrite the weights it starts from, or shipped weights.

    A fine-tuning run started with ``--initial_ckpt bundles/<name>/models/model.pt --ckpt_dir
    bundles/<name>/models`` would otherwise replace the shipped weights (whose sha256 the bundle's
    metadata records) with a partly trained model.

    Args:
        ckpt_dir: folder the training writes its checkpoints to.
        initial_ckpt: the checkpoint the training starts from (``""`` for none).
        filenames: names the training writes into ``ckpt_dir``.
        protected: further files that must never be written (a bundle's shipped ``models/model.pt``).

    Returns:
        ``ckpt_dir`` (so a config can use the call where it needs the folder).

    Raises:
        ValueError: a checkpoint would be written onto ``initial_ckpt`` or a protected file.
    """
    guarded = [Path(p) for p in protected if str(p)]
    if initial_ckpt is not None and str(initial_ckpt):
        guarded.append(Path(initial_ckpt))
    for name in filenames:
        target = Path(ckpt_dir) / name
        for path in guarded:
            if target.resolve() == path.resolve():
                raise ValueError(
                    f"training would write {target} over {path}, the weights it starts from or the bundle's "
                    "shipped weights; pass another --ckpt_dir (the default is the bundle's runs/ folder)"
                )
    return str(ckpt_dir)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, in hex (read in 1 MiB blocks), as ``metadata.json`` and
    ``large_files.yml`` record shipped weights."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_misfit(state: Mapping[str, torch.Tensor], network: torch.nn.Module) -> str:
    """What keeps ``network.load_state_dict(state)`` (strict) from working, in words; "" when it fits.

    Args:
        state: a state dict.
        network: the network it is meant for.

    Returns:
        e.g. ``"3 of its 26 tensors missing, 0 of another shape, 1 unexpected (e.g. head.weight: shape
        (5, 64), the network's (3, 64))"``, or "".
    """
    own = _unwrap(network).state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    unexpected = [k for k in state if k not in own]
    if not (missing or wrong or unexpected):
        return ""
    example = (wrong or missing or unexpected)[0]
    if wrong:
        detail = f"shape {tuple(state[example].shape)}, the network's {tuple(own[example].shape)}"
    else:
        detail = "missing" if missing else "not in the network"
    return (f"{len(missing)} of its {len(own)} tensors missing, {len(wrong)} of another shape, {len(unexpected)} "
            f"unexpected (e.g. {example}: {detail})")


def checked_weights(
    path: str | os.PathLike,
    network: torch.nn.Module | None = None,
    bundle_root: str | os.PathLike = ".",
    ckpt_id: str = "ckpt_path",
) -> str:
    """Check the weights an inference or evaluation config is about to load; return ``path``.

    Inference configs call it through :class:`CheckedCheckpointLoader`, evaluation configs as their
    ``CheckpointLoader``'s ``load_path`` (``$common.bundle_utils.checked_weights(@ckpt_path, @network_def,
    @bundle_root)``), so a problem is reported before any data is read, in one line (``WeightsUnavailable``)
    that names the file and the command that restores, points at or trains it:

    * the file does not exist;
    * it is the bundle's shipped ``models/model.pt`` and its sha256 differs from the one ``metadata.json``
      records (a Git LFS pointer, a truncated copy, or weights written over it);
    * it cannot be read with ``torch.load(weights_only=True)``;
    * its tensors do not load into ``network`` the way ``CheckpointLoader`` loads them: the file itself, or
      its ``"model"`` entry, as a strict state dict (names and shapes, nothing missing, nothing extra).

    Args:
        path: the checkpoint file.
        network: the network the weights are for; None skips the name and shape check.
        bundle_root: the bundle being run (its ``configs/metadata.json`` records the shipped weights' sha256).
        ckpt_id: the config id that names the checkpoint (shown in the remedy).

    Returns:
        ``str(path)``.

    Raises:
        WeightsUnavailable: any of the problems above.
    """
    import json

    path, bundle = Path(path), Path(bundle_root)
    train = (f"python -m monai.bundle run --config_file {bundle}/configs/train.yaml --bundle_root {bundle} "
             "--dataset_dir DATA")
    given = "the folder of their model.pt" if ckpt_id.endswith("_dir") else "their model.pt"
    remedy = f"train weights with `{train}` and pass {given} with --{ckpt_id}"
    shipped_sha = None
    shipped = bundle / "models" / "model.pt"
    meta_file = bundle / "configs" / "metadata.json"
    if path.resolve() == shipped.resolve() and meta_file.is_file():
        shipped_sha = (json.loads(meta_file.read_text()).get("weights") or {}).get("sha256")
        if shipped_sha:
            remedy = f"restore the shipped weights with `git checkout -- {shipped}` (sha256 in {meta_file}), or {remedy}"
    elif shipped.is_file():
        remedy = f"score the shipped weights with --ckpt_path {shipped}, or {remedy}"
    remedy = remedy[0].upper() + remedy[1:]
    if not path.is_file():
        raise WeightsUnavailable(path, "weights file not found", remedy)
    if shipped_sha and sha256_file(path) != shipped_sha:
        raise WeightsUnavailable(path, f"sha256 differs from the {shipped_sha[:12]}... that metadata.json records "
                                       "(damaged, a Git LFS pointer, or other weights copied over it)", remedy)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, non-weights objects refused by weights_only
        raise WeightsUnavailable(path, f"cannot be read as PyTorch weights ({type(e).__name__})", remedy) from None
    # as MONAI's CheckpointLoader (ignite) loads into {"model": network}: the "model" entry, else the whole file
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(path, "holds no state dict (tensors by name)", remedy)
    if network is not None:
        misfit = weights_misfit(state, network)
        if misfit:
            raise WeightsUnavailable(
                path, f"does not fit this network ({misfit}): weights of another bundle or of other network settings",
                remedy,
            )
    return str(path)


def check_vendored_common(bundle_root: str | os.PathLike) -> None:
    """Refuse to run an unpacked archive with another copy of `common` than the one it carries.

    An archive (``scripts/package_bundle.py``) holds the `common` code its weights and configs were tested
    with. Started from another folder without its root on the path, Python would import an installed
    `common` (another version) or none; the first would run silently on other code.

    Args:
        bundle_root: the bundle being run.

    Raises:
        InputDataError: the bundle has its own ``common/`` and the imported package is not it.
    """
    import common

    vendored = Path(bundle_root) / "common"
    if not (vendored / "__init__.py").is_file():
        return  # a bundle of the repository: it uses the installed package
    imported = Path(common.__file__).resolve().parent
    if imported != vendored.resolve():
        raise InputDataError(
            vendored,
            f"this bundle carries its own `common`, but Python imported {imported}; start it with "
            f"`python {Path(bundle_root)} run --config_file configs/inference.yaml ...` or set PYTHONPATH={Path(bundle_root)}",
        )


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader``, which first checks the file (:func:`checked_weights`) and the code it runs
    with (:func:`check_vendored_common`).

    The checks run when the loader is instantiated, so an inference that disables it
    (``_disabled_: "$not common.bundle_utils.flag(@load_pretrain)"``, as ``inference_onnx.yaml`` does) needs no PyTorch weights at all.

    Args:
        load_path: the checkpoint (``@ckpt_path``).
        load_dict: what to load, ``{"model": network}``; the file is checked against that network.
        bundle_root: the bundle being run (its ``metadata.json`` records the shipped weights' sha256).
        kwargs: the other arguments of ``CheckpointLoader`` (``map_location``, ``strict``, ...).
    """

    def __init__(self, load_path: str, load_dict: dict, bundle_root: str | os.PathLike = ".", **kwargs) -> None:
        check_vendored_common(bundle_root)
        weights = checked_weights(load_path, load_dict.get("model"), bundle_root)
        super().__init__(load_path=weights, load_dict=load_dict, **kwargs)


def freeze(network: torch.nn.Module, trainable: Sequence[str] | str = ()) -> torch.nn.Module:
    """Stop gradients for every parameter except those whose name starts with one of ``trainable``.

    Batch-norm running statistics still update in ``train()`` mode; put such layers in ``eval()`` if
    they must stay fixed too.

    Args:
        network: the network.
        trainable: parameter-name prefixes that keep training, e.g. ``("class_layers",)``; empty freezes all.

    Returns:
        ``network``.

    Raises:
        ValueError: a prefix matches no parameter (a typo would otherwise freeze everything silently).
    """
    prefixes = (trainable,) if isinstance(trainable, str) else tuple(trainable)
    target = _unwrap(network)
    names = [n for n, _ in target.named_parameters()]
    unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unused:
        raise ValueError(f"freeze: no parameter names start with {unused}; e.g. {names[:5]}")
    n_trainable = 0
    for name, param in target.named_parameters():
        param.requires_grad = any(name.startswith(p) for p in prefixes)
        n_trainable += int(param.requires_grad)
    logger.info("freeze: %d of %d parameter tensors stay trainable (%s)", n_trainable, len(names), prefixes)
    return network


class BatchSummary:
    """Ends a batch inference with one line: how many cases were written and how many skipped, and why.

    Attach it last to an inference evaluator whose dataset is a ``SkipBadCasesDataset``. When no case was
    written (every input refused, or none found), it raises :class:`~common.errors.NothingWritten`, so
    ``python -m monai.bundle run`` exits with status 1 instead of 0.

    Args:
        dataset: the inference dataset (its ``skipped`` lists the refused cases).
        what: the name of one case in the summary ("image", "scan", "encounter").
    """

    def __init__(self, dataset: object, what: str = "case") -> None:
        self.dataset = dataset
        self.what = what
        self.written = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.COMPLETED, self._summarise)

    def _reset(self, engine) -> None:
        self.written = 0

    def _count(self, engine) -> None:
        output = engine.state.output
        self.written += len(output) if isinstance(output, (list, tuple)) else 1

    def summary(self) -> str:
        """``N <what>s written, M skipped (K reason; ...)``, reasons grouped without file names."""
        skipped = skipped_cases(self.dataset)
        reasons: dict[str, int] = {}
        for case in skipped:
            problem = re.sub(r"^\S+ row \d+: ", "", case["problem"])  # "encounters.csv row 7: ..." -> the reason
            reason = re.split(r"[:(]", problem)[0].strip()[:80] or "unreadable"
            reasons[reason] = reasons.get(reason, 0) + 1
        text = f"{self.written} {self.what}(s) written, {len(skipped)} skipped"
        if reasons:
            text += " (" + "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])) + ")"
        return text

    def _summarise(self, engine) -> None:
        text = self.summary()
        if self.written == 0:
            raise NothingWritten(text)
        logger.info("batch done: %s", text)


class ResumableTraining:
    """Makes a bundle's training resumable after a kill: ``--resume true`` goes on from the last epoch.

    After every epoch (and its validation) it writes ``<ckpt_dir>/resume.pt`` atomically: the state of
    every object in ``objects`` (network, optimiser, scheduler), the trainer's epoch and iteration, the
    validator's best metric and the best-model saver's record of it. With ``resume`` it loads that file
    when the trainer starts, so a restart goes on with the next epoch (at most the killed epoch is lost),
    keeps the best validation score, and the best ``model.pt`` is only replaced by a better one. Stale
    temporary files of killed atomic writes in ``ckpt_dir`` are removed when training starts.

    Attach it to the trainer right after its ``ValidationHandler`` (the multi-GPU configs drop the last
    two handlers on ranks other than 0); only rank 0 writes.

    Args:
        ckpt_dir: the training's checkpoint folder.
        objects: ``{name: object with state_dict/load_state_dict}`` to save and restore.
        resume: load ``resume.pt`` at the start (an error naming the file when there is none).
        validator: the validation engine whose ``best_metric`` is kept.
        best_saver: the validator's key-metric ``CheckpointSaver`` (writes the best ``model.pt``).
    """

    FILENAME = "resume.pt"

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        objects: Mapping[str, object],
        resume: bool = False,
        validator: object | None = None,
        best_saver: object | None = None,
    ) -> None:
        self.path = Path(ckpt_dir) / self.FILENAME
        self.objects = dict(objects)
        self.resume = bool(resume)
        self.validator = validator
        self.best_saver = best_saver

    def attach(self, engine) -> None:
        from ignite.engine import Events

        for stale in self.path.parent.glob(".*.tmp*"):  # temporary files of writes that were killed
            stale.unlink(missing_ok=True)
        if self.resume:
            if not self.path.is_file():
                raise WeightsUnavailable(self.path, "no training to resume here", "Train without --resume true")
            engine.add_event_handler(Events.STARTED, self._load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _best_checkpoint(self):
        return getattr(self.best_saver, "_key_metric_checkpoint", None)

    def _save(self, engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        from common.io.atomic import atomic_torch_save

        state = {name: _unwrap(obj).state_dict() for name, obj in self.objects.items()}
        state["trainer"] = dict(engine.state_dict())
        state["epoch"] = int(engine.state.epoch)
        vstate = getattr(self.validator, "state", None)
        state["best"] = {
            "metric": float(getattr(vstate, "best_metric", -1.0)),
            "epoch": int(getattr(vstate, "best_metric_epoch", -1)),
        }
        checkpoint = self._best_checkpoint()
        # plain floats and strings: a metric may be a numpy scalar, which weights_only loading refuses
        saved = checkpoint.state_dict() if checkpoint is not None else {}
        state["best_saver"] = {k: [(float(p), str(f)) for p, f in v] for k, v in saved.items()}
        atomic_torch_save(state, self.path)

    def _load(self, engine) -> None:
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for name, obj in self.objects.items():
            _unwrap(obj).load_state_dict(state[name])
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(state["trainer"])
        engine.state.max_epochs = max_epochs  # --max_epochs may extend a finished training
        vstate = getattr(self.validator, "state", None)
        if vstate is not None:
            vstate.best_metric, vstate.best_metric_epoch = state["best"]["metric"], state["best"]["epoch"]
        checkpoint = self._best_checkpoint()
        if checkpoint is not None and state.get("best_saver"):
            checkpoint.load_state_dict(state["best_saver"])
        logger.info(
            "resumed from %s: epoch %d of %d done, best validation %.4f (epoch %d)",
            self.path, engine.state.epoch, max_epochs, state["best"]["metric"], state["best"]["epoch"],
        )
