"""Free-energy differences between thermodynamic states on one configuration space.

- :mod:`~boltzdiff.freeenergy.interpolant`: the stochastic interpolant between two states and its minibatch
  optimal-transport coupling;
- :mod:`~boltzdiff.freeenergy.model`: a time-dependent energy along it whose end levels are the exact energies;
- :mod:`~boltzdiff.freeenergy.train`: its DiffCLF training and the refit of the log-normalisers;
- :mod:`~boltzdiff.freeenergy.estimate`: annealed importance sampling both ways and Bennett's acceptance ratio;
- :mod:`~boltzdiff.freeenergy.alchemical`: the field's baseline, MBAR over an alchemical lambda path (OpenMM);
- :mod:`~boltzdiff.freeenergy.states`: end states with closed-form free energies, for checks.
"""
