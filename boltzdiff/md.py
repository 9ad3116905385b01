"""Compatibility re-exports; to be removed."""

from boltzdiff.io import save_npy as _save_npy
from boltzdiff.reference.chains import ChainConfig as MCMCConfig
from boltzdiff.reference.chains import run_chains as run_mcmc
from boltzdiff.reference.frames import read_start_structure
from boltzdiff.reference.frames import write_frames as _write_frames
from boltzdiff.reference.md import MDConfig, run_md

__all__ = ["MCMCConfig", "MDConfig", "_save_npy", "_write_frames", "read_start_structure", "run_mcmc", "run_md"]
