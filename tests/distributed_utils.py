"""Running the bundles' torchrun tests (2 CPU processes over gloo) robustly on a busy 2-core machine."""

from __future__ import annotations

import subprocess
from typing import Any

# On a loaded CPU a gloo rank occasionally aborts in C++ (a std::thread destroyed while joinable) before
# training starts; the other rank is then killed by torchrun. It is the transport, not the bundle: the
# same command passes when re-run. Any other failure is reported at once.
GLOO_ABORT = "terminate called without an active exception"


def run_torchrun(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, **kwargs)``, re-run once after a gloo abort."""
    kwargs = {"capture_output": True, "text": True, **kwargs}
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0 and GLOO_ABORT in (result.stdout or "") + (result.stderr or ""):
        result = subprocess.run(command, **kwargs)
    return result
