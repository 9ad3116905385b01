"""Analysis of weighted samples: ESS, free-energy profiles and ΔF with bootstrap errors, comparison with a
reference (PMF RMSE, Jensen–Shannon, Wasserstein-1), plots and the run report.

Pure numpy functions of arrays (torch tensors are accepted and converted to float64); matplotlib is imported
only inside the plotting functions in :mod:`boltzdiff.analysis.report`.
"""

from boltzdiff.analysis.free_energy import (
    DeltaF,
    FreeEnergyProfile,
    FreeEnergySurface,
    Histogram1D,
    Histogram2D,
    PMFComparison,
    bootstrap_indices,
    distance_histogram,
    free_energy_from_histogram,
    free_energy_profile,
    free_energy_profile_from_probabilities,
    free_energy_surface,
    jensen_shannon,
    pairwise_distances,
    pmf_rmse,
    two_state_delta_f,
    wasserstein_1,
    weighted_histogram_1d,
    weighted_histogram_2d,
    wrap_angle,
)
from boltzdiff.analysis.weights import (
    CleanLogWeights,
    clean_log_weights,
    kish_ess_trace,
    normalized_weights,
    weighted_mean,
    weighted_var,
)

__all__ = [
    "CleanLogWeights",
    "DeltaF",
    "FreeEnergyProfile",
    "FreeEnergySurface",
    "Histogram1D",
    "Histogram2D",
    "PMFComparison",
    "bootstrap_indices",
    "clean_log_weights",
    "distance_histogram",
    "free_energy_from_histogram",
    "free_energy_profile",
    "free_energy_profile_from_probabilities",
    "free_energy_surface",
    "jensen_shannon",
    "kish_ess_trace",
    "normalized_weights",
    "pairwise_distances",
    "pmf_rmse",
    "two_state_delta_f",
    "wasserstein_1",
    "weighted_histogram_1d",
    "weighted_histogram_2d",
    "weighted_mean",
    "weighted_var",
    "wrap_angle",
]
