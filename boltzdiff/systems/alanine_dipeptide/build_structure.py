"""Build ``alanine-dipeptide.pdb`` (ACE-ALA-NME, 22 atoms) from internal coordinates, then minimise it.

Run once from the repository root (the outputs are committed):

    python boltzdiff/systems/alanine_dipeptide/build_structure.py
    python boltzdiff/systems/alanine_dipeptide/build_structure.py --phi 60 --psi 45 --out alanine-dipeptide-phi-pos.pdb

The second structure lies in the phi > 0 basin (alpha_L), which 300 K MD from the first never reaches in
affordable time: ``reference: starts:`` in run.yaml can start MD replicas from both.

Every atom is placed from three already-placed atoms with a bond length, a bond angle and a dihedral
(natural-extension reference frame); standard peptide geometry (Engh-Huber-like values), trans peptide bonds,
staggered methyl groups and an L-alanine are used, starting at phi = -80 deg, psi = 75 deg. The structure is
then energy-minimised with amber99sbildn + amber99_obc (NoCutoff, no constraints) and written in the
standard atom order (phi = atoms 4, 6, 8, 14; psi = 6, 8, 14, 16, 0-based).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# (residue, atom name, element) in the standard order
ATOMS = [
    ("ACE", "H1", "H"),
    ("ACE", "CH3", "C"),
    ("ACE", "H2", "H"),
    ("ACE", "H3", "H"),
    ("ACE", "C", "C"),
    ("ACE", "O", "O"),
    ("ALA", "N", "N"),
    ("ALA", "H", "H"),
    ("ALA", "CA", "C"),
    ("ALA", "HA", "H"),
    ("ALA", "CB", "C"),
    ("ALA", "HB1", "H"),
    ("ALA", "HB2", "H"),
    ("ALA", "HB3", "H"),
    ("ALA", "C", "C"),
    ("ALA", "O", "O"),
    ("NME", "N", "N"),
    ("NME", "H", "H"),
    ("NME", "C", "C"),
    ("NME", "H1", "H"),
    ("NME", "H2", "H"),
    ("NME", "H3", "H"),
]


def place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Place d bonded to c: |cd| = bond, angle(b, c, d) = angle, dihedral(a, b, c, d) = torsion (deg)."""
    ang, tor = np.radians(angle), np.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(ang), bond * np.sin(ang) * np.cos(tor), bond * np.sin(ang) * np.sin(tor)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def build(phi: float = -80.0, psi: float = 75.0) -> np.ndarray:
    """Positions ``(22, 3)`` in Angstrom, in the order of :data:`ATOMS`."""
    x = np.zeros((22, 3))
    x[1] = [0.0, 0.0, 0.0]  # ACE CH3
    x[4] = [1.52, 0.0, 0.0]  # ACE C
    ang = np.radians(116.6)
    x[6] = x[4] + 1.335 * np.array([-np.cos(ang), np.sin(ang), 0.0])  # ALA N
    x[5] = place(x[6], x[1], x[4], 1.229, 120.5, 180.0)  # ACE O, trans to N about CH3-C
    x[8] = place(x[1], x[4], x[6], 1.458, 121.9, 180.0)  # CA, omega = 180
    x[7] = place(x[1], x[4], x[6], 1.010, 119.0, 0.0)  # H, anti to O
    x[14] = place(x[4], x[6], x[8], 1.525, 111.2, phi)  # ALA C
    x[16] = place(x[6], x[8], x[14], 1.335, 116.2, psi)  # NME N
    x[15] = place(x[6], x[8], x[14], 1.229, 120.5, psi + 180.0)  # ALA O
    x[18] = place(x[8], x[14], x[16], 1.449, 121.9, 180.0)  # NME C, omega = 180
    x[17] = place(x[8], x[14], x[16], 1.010, 119.0, 0.0)  # NME H
    # CB and HA about CA; the sign of the CB torsion gives L-alanine (checked by the chirality test)
    x[10] = place(x[14], x[6], x[8], 1.530, 110.5, -122.5)  # CB
    x[9] = place(x[14], x[6], x[8], 1.090, 109.5, 117.0)  # HA
    for k, t in zip((0, 2, 3), (180.0, 60.0, -60.0)):  # ACE methyl H
        x[k] = place(x[6], x[4], x[1], 1.090, 109.5, t)
    for k, t in zip((11, 12, 13), (180.0, 60.0, -60.0)):  # CB methyl H
        x[k] = place(x[6], x[8], x[10], 1.090, 109.5, t)
    for k, t in zip((19, 20, 21), (180.0, 60.0, -60.0)):  # NME methyl H
        x[k] = place(x[14], x[16], x[18], 1.090, 109.5, t)
    return x


def topology():
    import openmm.app as app

    top = app.Topology()
    chain = top.addChain()
    residues, atoms = {}, []
    for res, name, el in ATOMS:
        if res not in residues:
            residues[res] = top.addResidue(res, chain)
        atoms.append(top.addAtom(name, app.Element.getBySymbol(el), residues[res]))
    bonds = [
        (0, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (4, 5),
        (4, 6),
        (6, 7),
        (6, 8),
        (8, 9),
        (8, 10),
        (10, 11),
        (10, 12),
        (10, 13),
        (8, 14),
        (14, 15),
        (14, 16),
        (16, 17),
        (16, 18),
        (18, 19),
        (18, 20),
        (18, 21),
    ]
    for i, j in bonds:
        top.addBond(atoms[i], atoms[j])
    return top


def main() -> None:
    import argparse

    import openmm
    import openmm.app as app
    import openmm.unit as u

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phi", type=float, default=-80.0, help="starting phi (deg) before minimisation")
    ap.add_argument("--psi", type=float, default=75.0, help="starting psi (deg) before minimisation")
    ap.add_argument("--out", default="alanine-dipeptide.pdb", help="file name in this folder")
    args = ap.parse_args()
    top = topology()
    pos = build(args.phi, args.psi) * 0.1  # nm
    ff = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos * u.nanometer)
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy()
    openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 0)
    st = ctx.getState(getEnergy=True, getPositions=True)
    print(f"energy before {e0}, after minimisation {st.getPotentialEnergy()}")
    out = HERE / args.out
    with open(out, "w") as fh:
        app.PDBFile.writeFile(top, st.getPositions(), fh, keepIds=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
