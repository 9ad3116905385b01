"""Compatibility re-exports; to be removed."""

from boltzdiff.reference.metad import MetadConfig, reweight_log_weights, run_metad_2d

__all__ = ["MetadConfig", "reweight_log_weights", "run_metad_2d"]
