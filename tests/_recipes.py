"""Tiny run settings shared by the end-to-end tests (tests/test_pipeline.py, tests/test_device.py), and the
shipped alanine dipeptide's atom indices."""

import shutil

import yaml

from boltzdiff.systems import SYSTEMS_DIR

# the shipped alanine dipeptide (ACE-ALA-NME, 22 atoms, 0-based): its spec's cvs and chiral centre, written out
# so that tests can check the spec against them (tests/test_systems_molecular.py)
ALDP_PHI = (4, 6, 8, 14)
ALDP_PSI = (6, 8, 14, 16)
ALDP_CHIRAL_QUADS = ((8, 6, 14, 10),)

TINY_TRAIN = dict(steps=20, batch_size=16, n_levels=12, k=2, warmup_steps=5, checkpoint_every=10, lr_warmup=2)

#: a `boltzdiff train` of the two-mode mixture in a few seconds (checkpoints every 4 of its 12 steps)
SMALL_GMM_TRAIN = dict(
    system="gmm2_unbalanced",
    steps=12,
    batch_size=16,
    n_levels=16,
    width=16,
    depth=1,
    k=3,
    n_data=500,
    checkpoint_every=4,
    lr_warmup=2,
)

#: run.yaml of a DW4 `boltzdiff run` in miniature (tiny EGNN, short MCMC reference, 64 particles)
TINY_DW4_RUN = {
    "train": {**TINY_TRAIN, "network": "egnn", "egnn": {"hidden": 8, "n_layers": 1}},
    "presets": {
        "quick": {
            "reference": {"n_steps": 300, "n_chains": 8, "burn_in": 100, "save_every": 10, "step_size": 0.05},
            "sample": {"n": 64, "n_bridge": 2, "mcmc_steps": 0},
        }
    },
}

# the alanine-dipeptide recipe in miniature: pair-distance model with target score matching, 500 K MD data
ALDP_PAIRMLP_TRAIN = {
    **TINY_TRAIN,
    "steps": 300,
    "warmup_steps": 100,
    "batch_size": 64,
    "network": "pairmlp",
    "width": 32,
    "depth": 1,
    "pairmlp": {"stiffness_init": 1.0},
    "tsm_scale": 0.005,
}
ALDP_HOT_REFERENCE = {"ns": 0.02, "save_every_ps": 0.05, "temperature": 500.0}


def tiny_aldp_run(reference: dict, final_mcmc_steps: int, final_hmc_steps: int = 0) -> dict:
    """run.yaml of an alanine-dipeptide `boltzdiff run` in seconds: a tiny EGNN, two SMC runs of 16 particles
    with torsion + MALA sweeps (and HMC trajectories) after the bridge, and the given ``reference`` settings."""
    return {
        "train": {
            **TINY_TRAIN,
            "steps": 10,
            "warmup_steps": 4,
            "network": "egnn",
            "egnn": {"hidden": 8, "n_layers": 1},
        },
        "presets": {
            "quick": {
                "reference": dict(reference),
                "sample": {
                    "n": 32,
                    "n_bridge": 2,
                    "mcmc_steps": 0,
                    "n_runs": 2,
                    "torsion": {"bonds": "cvs"},
                    "final_mcmc_steps": final_mcmc_steps,
                    "final_hmc_steps": final_hmc_steps,
                    "final_hmc_leapfrog": 3,
                    "final_hmc_average": final_hmc_steps,
                },
            }
        },
    }


def make_system(tmp_path, name, run_yaml):
    """A copy of the shipped system ``<name>`` (or an empty folder) under ``tmp_path``, ``run_yaml`` as its run.yaml."""
    d = tmp_path / name
    shutil.copytree(SYSTEMS_DIR / name, d) if (SYSTEMS_DIR / name).is_dir() else d.mkdir()
    (d / "run.yaml").write_text(yaml.safe_dump(run_yaml))
    return d
