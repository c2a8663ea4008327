"""Deployment helpers: Triton model repositories and self-contained bundle archives."""

from common.deploy.package import package_bundle, safe_extract
from common.deploy.triton import export_triton, triton_config

__all__ = ["export_triton", "package_bundle", "safe_extract", "triton_config"]
