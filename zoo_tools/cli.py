"""``zoo``: run a bundle of the zoo on a folder of scans or a study on a PACS, as lungmask and TotalSegmentator run.

    zoo list
    zoo run lung_ct_segmentation SCANS OUT                      # every series and volume in SCANS
    zoo run lung_ct_segmentation SCANS OUT --format dicom       # DICOM SEG only, for DICOM input
    zoo run lung_ct_segmentation http://pacs:8042/dicom-web/studies/1.2.3 OUT --store http://pacs:8042/dicom-web
    zoo run pediatric_cxr_pneumonia_classification FILMS OUT --device cuda

The bundle's ``inference.yaml`` runs once over every case (the model is loaded once), with a progress bar and
the batch summary line; ``--format`` is the bundle's ``output_format`` (its own files, ``dicom`` or ``both``).
A DICOMweb study URL as input is retrieved first (into ``OUT/input``); ``--store URL`` sends the DICOM objects
this run wrote (SEG, SR) to that DICOMweb server. The oxygen bundle reads a folder with its ``encounters.csv``
(a study alone has no EHR). Installed by ``pip install -e .``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from zoo_tools import BUNDLES


def _bundle_root(bundle: str) -> Path:
    path = Path(bundle)
    if (path / "configs" / "inference.yaml").is_file():
        return path
    if (BUNDLES / bundle / "configs" / "inference.yaml").is_file():
        return BUNDLES / bundle
    known = ", ".join(sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()))
    raise SystemExit(f"error: {bundle}: no such bundle (a folder with configs/inference.yaml, or one of: {known})")


def _progress_bar(evaluator, total: int, desc: str) -> None:
    """A bar over the cases (an iteration may hold several: a batch of films), closed when the run ends."""
    from ignite.engine import Events
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="case", file=sys.stderr)

    def advance(engine) -> None:
        output = engine.state.output
        bar.update(len(output) if isinstance(output, list) else 1)

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, advance)
    evaluator.add_event_handler(Events.COMPLETED, lambda engine: bar.close())


def list_bundles() -> None:
    """Print the bundles ``zoo run`` knows by name."""
    print("\n".join(sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "inference.yaml").is_file())))


def run(bundle: str, input: str, output: str, device: str = "", format: str = "", store: str = "",
        progress: bool = True) -> None:
    """Run ``bundle``'s inference on ``input``, writing to ``output``.

    Args:
        bundle: a bundle name (``zoo list``) or folder.
        input: a folder or file of cases (what the bundle's ``dataset_dir`` takes), or a DICOMweb study URL.
        output: the output folder.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...; default: the bundle's (the first GPU when there is one).
        format: the bundle's ``output_format`` (``dicom``, ``both``, or its own files); default: the bundle's.
        store: a DICOMweb base URL to store the run's DICOM results on.
        progress: show a progress bar over the cases.
    """
    import torch
    from monai.bundle import ConfigWorkflow

    from common.io.dicomweb import fetch_study, is_study_url, parse_study_url
    from common.io.dicomweb import store as stow

    root = _bundle_root(str(bundle))
    out, input = Path(str(output)), str(input)  # fire reads a folder named 20240101 as a number
    if is_study_url(input):
        shutil.rmtree(out / "input", ignore_errors=True)  # this study only, not one an earlier run fetched
        dataset_dir = fetch_study(*parse_study_url(input), out / "input")
    else:
        dataset_dir = Path(input)
    overrides = {"dataset_dir": str(dataset_dir), "output_dir": str(out)}
    if device:
        overrides["device"] = torch.device(device)
    if format:
        overrides["output_format"] = format
    workflow = ConfigWorkflow(config_file=str(root / "configs" / "inference.yaml"), workflow_type="infer",
                              bundle_root=str(root), logging_file=str(root / "configs" / "logging.conf"), **overrides)
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    if progress:
        dataset = workflow.parser.get_parsed_content("dataset")
        _progress_bar(evaluator, len(getattr(dataset, "data", dataset)), root.name)
    started = time.time()
    workflow.run()
    workflow.finalize()
    if store:
        # what this run wrote: not the fetched input, nor the results of an earlier run into the same folder
        results = sorted(p for p in out.rglob("*.dcm")
                         if p.relative_to(out).parts[0] != "input" and p.stat().st_mtime >= started)
        stow(store, results)
        print(f"stored {len(results)} DICOM result object(s) on {store}")


def main(argv: list[str] | None = None) -> None:
    """The ``zoo`` console command (``zoo list``, ``zoo run ...``)."""
    import fire

    import common  # noqa: F401  (the one-line error hook and the redaction of patient identifiers in logs)

    fire.Fire({"list": list_bundles, "run": run}, command=argv if argv is not None else sys.argv[1:], name="zoo")


if __name__ == "__main__":
    main()
