"""Smoke test on real crowd votes (shared data folder; skipped when it is missing)."""

import os
from pathlib import Path

import pandas as pd
import pytest

from labeling.aggregation import DawidSkene

DATA_DIR = Path(
    os.environ.get(
        "QUORUM_DATA_DIR", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
    )
)

# crowd-kit 1.4.2 Dawid-Skene accuracy from the data README
CROWDKIT_DS = {"face_sentiment": 0.640, "product_matching": 0.940}


@pytest.mark.parametrize("name", sorted(CROWDKIT_DS))
def test_dawid_skene_at_least_as_accurate_as_crowdkit(name):
    folder = DATA_DIR / "crowd" / name
    if not (folder / "answer.csv").exists():
        pytest.skip(f"{folder} missing")
    # keep_default_na=False: some real worker ids read as NaN otherwise (e.g. "NA")
    votes = pd.read_csv(folder / "answer.csv", keep_default_na=False, dtype=str)
    truth = pd.read_csv(folder / "truth.csv", keep_default_na=False, dtype=str).set_index("task")[
        "truth"
    ]
    labels = DawidSkene().fit_predict(votes).reindex(truth.index)
    assert (labels == truth).mean() >= CROWDKIT_DS[name] - 0.002
