"""Particle targets in torch: Lennard-Jones clusters (LJ-n) and the 4-particle 2-D double well (DW4).

Both are in **reduced units**: lengths in units of ``r_m`` (written out as nm where a file format needs a
unit), energies in units of ``kT``, and the spec's ``temperature`` is the reduced temperature ``T* = kT/eps``
(1 for the benchmarks), so ``u(x) = U(x) / T*``.

LJ-n (``eps = r_m = 1``, harmonic centre term with ``c = 1``), with the pair sum over unique pairs
(``pair_sum="unique"``, ``s = 1``) or over ordered pairs ``i != j`` (``pair_sum="ordered"``, ``s = 2``: every pair
counted twice, the convention of bgflow's ``LennardJonesPotential`` and of the public LJ13/LJ55 test sets)::

    U(x) = s * eps * sum_{i<j} [(r_m/r_ij)^12 - 2 (r_m/r_ij)^6] + c/2 * sum_i |x_i - mean(x)|^2

DW4 (4 particles in 2-D, ``a = 0, b = -4, c = 0.9, d0 = 4``)::

    U(x) = sum_{i<j} [a (d_ij - d0) + b (d_ij - d0)^2 + c (d_ij - d0)^4]

:func:`lennard_jones_openmm_system` writes the same LJ energy as an OpenMM ``System`` (CustomNonbondedForce +
CustomCentroidBondForce) with ``eps = 1 kJ/mol``; evaluated at ``LJ_OPENMM_TEMPERATURE`` (so that
``kT = 1 kJ/mol``) its reduced energy equals the torch target's at ``T* = 1``.
"""

from __future__ import annotations

import torch

from boltzdiff.geometry import interatomic_distances
from boltzdiff.targets.base import Target

#: K at which kT = 1 kJ/mol (1 / R), the temperature of the OpenMM version of LJ-n
LJ_OPENMM_TEMPERATURE = 1.0 / 8.31446261815324e-3

#: ``pair_sum`` conventions of LJ-n and the factor each puts on the unique-pair sum
LJ_PAIR_SUMS = {"unique": 1.0, "ordered": 2.0}


def lj_pair_factor(pair_sum: str) -> float:
    """2 for ``"ordered"`` (sum over ``i != j``), 1 for ``"unique"`` (``i < j``); ValueError otherwise."""
    if pair_sum not in LJ_PAIR_SUMS:
        raise ValueError(f"pair_sum: expected one of {sorted(LJ_PAIR_SUMS)}, got {pair_sum!r}")
    return LJ_PAIR_SUMS[pair_sum]


class LennardJonesCluster(Target):
    """LJ-n cluster with a harmonic centre term, reduced energy ``(B,)`` (see the module docstring).

    Parameters
    ----------
    n_particles : int
    spatial_dim : int
        3 for the benchmarks.
    eps, rm : float
        Well depth and position of the minimum of the pair potential.
    oscillator_scale : float
        ``c`` of the harmonic term ``c/2 sum_i |x_i - mean|^2`` (0 switches it off).
    temperature : float
        Reduced temperature ``T*``; ``u = U / T*``.
    pair_sum : {"unique", "ordered"}
        Sum the pair term over ``i < j`` or over ``i != j`` (twice the former; bgflow's convention).
    """

    def __init__(
        self,
        n_particles: int,
        spatial_dim: int = 3,
        eps: float = 1.0,
        rm: float = 1.0,
        oscillator_scale: float = 1.0,
        temperature: float = 1.0,
        pair_sum: str = "unique",
    ):
        super().__init__(n_particles * spatial_dim, (n_particles, spatial_dim))
        self.n_particles, self.spatial_dim = n_particles, spatial_dim
        self.eps, self.rm, self.oscillator_scale, self.temperature = eps, rm, oscillator_scale, temperature
        self.pair_sum, self.pair_factor = pair_sum, lj_pair_factor(pair_sum)

    def pair_energy(self, x: torch.Tensor) -> torch.Tensor:
        """LJ part ``(B,)`` (not divided by ``T*``) of ``x: (B, dim)``, with the ``pair_sum`` convention's
        factor."""
        r = interatomic_distances(x.reshape(-1, self.n_particles, self.spatial_dim))
        s6 = (self.rm / r) ** 6
        return (self.pair_factor * self.eps) * (s6 * s6 - 2.0 * s6).sum(-1)

    def oscillator_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Harmonic centre term ``(B,)`` (not divided by ``T*``)."""
        p = x.reshape(-1, self.n_particles, self.spatial_dim)
        return 0.5 * self.oscillator_scale * ((p - p.mean(-2, keepdim=True)) ** 2).sum((-2, -1))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return (self.pair_energy(x) + self.oscillator_energy(x)) / self.temperature


class DoubleWell(Target):
    """Multi-particle double-well pair potential (DW4 by default), reduced energy ``(B,)``.

    Parameters
    ----------
    n_particles, spatial_dim : int
        4 and 2 for DW4.
    a, b, c, d0 : float
        ``sum_{i<j} a (d - d0) + b (d - d0)^2 + c (d - d0)^4``.
    temperature : float
        Reduced temperature; ``u = U / T*``.
    """

    def __init__(
        self,
        n_particles: int = 4,
        spatial_dim: int = 2,
        a: float = 0.0,
        b: float = -4.0,
        c: float = 0.9,
        d0: float = 4.0,
        temperature: float = 1.0,
    ):
        super().__init__(n_particles * spatial_dim, (n_particles, spatial_dim))
        self.n_particles, self.spatial_dim = n_particles, spatial_dim
        self.a, self.b, self.c, self.d0, self.temperature = a, b, c, d0, temperature

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        d = interatomic_distances(x.reshape(-1, self.n_particles, self.spatial_dim)) - self.d0
        return (self.a * d + self.b * d**2 + self.c * d**4).sum(-1) / self.temperature


def lennard_jones_openmm_system(
    n_particles: int,
    eps_kjmol: float = 1.0,
    rm_nm: float = 1.0,
    oscillator_scale: float = 1.0,
    mass: float = 1.0,
    pair_sum: str = "unique",
):
    """The LJ-n energy as an OpenMM ``System`` (3-D, no cutoff), lengths in nm and energies in kJ/mol.

    ``oscillator_scale`` is ``c`` in kJ/mol/nm^2. A CustomNonbondedForce counts each pair once, so
    ``pair_sum="ordered"`` (the sum over ``i != j``) is written as unique pairs with ``eps`` doubled; the centre
    term is a CustomCentroidBondForce between each particle and the (equal-weight) centroid.
    """
    import openmm

    system = openmm.System()
    for _ in range(n_particles):
        system.addParticle(mass)
    lj = openmm.CustomNonbondedForce("eps*((rm/r)^12 - 2*(rm/r)^6)")
    lj.addGlobalParameter("eps", lj_pair_factor(pair_sum) * eps_kjmol)
    lj.addGlobalParameter("rm", rm_nm)
    lj.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for _ in range(n_particles):
        lj.addParticle([])
    system.addForce(lj)
    if oscillator_scale:
        osc = openmm.CustomCentroidBondForce(2, "0.5*c*distance(g1, g2)^2")
        osc.addGlobalParameter("c", oscillator_scale)
        osc.addGroup(list(range(n_particles)), [1.0] * n_particles)
        for i in range(n_particles):
            osc.addGroup([i], [1.0])
            osc.addBond([i + 1, 0], [])
        system.addForce(osc)
    return system


def particle_topology(n_particles: int, element: str = "Ar", resname: str = "LJ"):
    """An mdtraj Topology of ``n_particles`` unbonded atoms (one residue each), for writing trajectories."""
    import mdtraj

    top = mdtraj.Topology()
    chain = top.add_chain()
    el = mdtraj.element.get_by_symbol(element)
    for i in range(n_particles):
        res = top.add_residue(resname, chain, resSeq=i + 1)
        top.add_atom(el.symbol, el, res)
    return top
