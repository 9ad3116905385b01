"""Reference sampling: the simulations whose frames train models and check them.

=====================================  ===================================================================
:mod:`boltzdiff.reference.md`          OpenMM Langevin MD of a molecule (``MDConfig``, ``run_md``)
:mod:`boltzdiff.reference.chains`      MCMC chains on a particle system's torch target (``ChainConfig``,
                                       ``run_chains``)
:mod:`boltzdiff.reference.metad`       well-tempered metadynamics over (φ, ψ), then MD under the frozen bias
:mod:`boltzdiff.reference.umbrella`    2-D umbrella sampling over (φ, ψ) and its MBAR reweighting (pymbar)
:mod:`boltzdiff.reference.frames`      run folders: frames, energies, progress files, start structures
=====================================  ===================================================================

Submodules are imported on use (OpenMM is only needed by MD, metadynamics and umbrella sampling).
"""
