"""Blindspot audit: concept prevalence in real against generated images (RA-SAE concepts),
memorisation candidates, and a self-contained HTML report."""

from .core import AuditConfig, AuditResult, ImageSet, run_audit

__all__ = ["AuditConfig", "AuditResult", "ImageSet", "run_audit"]
