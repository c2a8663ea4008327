"""Check bundles against the zoo's contract (CONVENTIONS: files, metadata schema, configs, network I/O).

    python scripts/verify_bundles.py                      # every folder in bundles/
    python scripts/verify_bundles.py --bundle bundles/X   # one bundle
    python scripts/verify_bundles.py --no_network         # skip instantiating network_def

Exits 1 with the list of problems (each naming the file) when any bundle fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

# run as a file (`python scripts/verify_bundles.py`): make this checkout's `common` importable first
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main(bundle: str | None = None, bundles_dir: str = str(REPO_ROOT / "bundles"), no_network: bool = False) -> None:
    """Verify one bundle (``--bundle``) or every bundle folder in ``bundles_dir``.

    Args:
        bundle: one bundle folder.
        bundles_dir: folder holding the bundles (default: the repository's ``bundles/``).
        no_network: skip the network input/output shape check.
    """
    from zoo_tools.bundle_verify import find_bundles, verify_bundle

    targets = [Path(bundle)] if bundle else find_bundles(bundles_dir)
    if not targets:
        print(f"no bundles found in {bundles_dir}")
        return
    failed = 0
    for target in targets:
        problems = verify_bundle(target, check_network=not no_network)
        if problems:
            failed += 1
            print(f"FAIL {target} ({len(problems)} problems)")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(f"ok   {target}")
    if failed:
        print(f"{failed} of {len(targets)} bundles failed verification", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
