"""The paper's result tables, to print beside ours (no torch: the image report uses them too)."""

from __future__ import annotations

#: The paper's Tables 1-3 (MNIST, Adult, LendingClub), mean±SD over 5 repetitions:
#: time (s), reconstruction, sparsity, validity (%), proximity.
PAPER: dict[str, dict[str, tuple[str, str, str, str, str]]] = {
    "adult": {
        "Our Method": ("0.008±0.002", "0.012±0.005", "0.343±0.127", "90.3", "0.193±0.045"),
        "GDL": ("1.568±0.224", "0.520±0.135", "0.090±0.002", "84.2", "2.170±0.835"),
        "Prototype": ("7.345±0.784", "4.463±0.563", "0.014±0.005", "75.3", "1.075±0.235"),
        "RL": ("1.804±0.112", "5.453±0.673", "0.012±0.008", "65.3", "0.875±0.132"),
    },
    "lending-club": {
        "Our Method": ("0.007±0.001", "0.132±0.081", "1.713±0.627", "92.1", "3.532±0.258"),
        "GDL": ("3.569±0.087", "0.142±0.046", "1.731±0.068", "76.3", "1.652±0.668"),
        "Prototype": ("3.137±0.915", "0.546±0.235", "1.016±0.035", "75.7", "1.975±1.045"),
        "RL": ("0.035±0.042", "0.673±0.124", "1.017±0.076", "67.5", "1.034±0.127"),
    },
    "mnist-1-to-7": {
        "Our Method": ("0.007±0.001", "0.012±0.003", "2.119±0.857", "89.5", "0.193±0.075"),
        "GDL": ("1.568±0.047", "0.247±0.048", "2.121±0.085", "77.9", "0.172±0.068"),
        "Prototype": ("1.345±0.095", "0.926±0.175", "0.014±0.005", "58.7", "1.075±0.055"),
        "RL": ("0.085±0.012", "0.857±0.058", "0.015±0.026", "60.5", "0.834±0.047"),
    },
}

#: The paper's validity (%) of its own method per dataset.
PAPER_VALIDITY = {name: float(rows["Our Method"][3]) for name, rows in PAPER.items()}
