"""analyses/attribution_agreement.py: per-document Spearman and per-cell failures, resumable."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

agreement = load_script("attribution_agreement")


def test_failures_rank_cells_by_error_and_count_sign_agreement():
    frame = pd.DataFrame([
        {"band": "0-9", "region": "doc 01", "exact": 0.2, "estimate": 0.1},
        {"band": "0-9", "region": "doc 01", "exact": 0.2, "estimate": 0.3},
        {"band": "10-19", "region": "sink", "exact": 0.1, "estimate": -0.5},
        {"band": "10-19", "region": "sink", "exact": 0.3, "estimate": 0.3},
    ])
    worst, best = agreement.failures(frame)
    assert (worst["band"], worst["region"]) == ("10-19", "sink")
    assert worst["mean_abs_error"] == pytest.approx(0.3) and worst["sign_agreement"] == 0.5
    assert best["sign_agreement"] == 1.0 and best["ratio_of_means"] == pytest.approx(1.0)


def test_tiny_run_writes_agreement_and_resumes(tmp_path):
    args = ["--model", "tiny", "--xsum", str(require_shared(XSUM_DIR) / "token_800_evaluation.json.gz"),
            "--docs", "1", "--regions", "2", "--out", str(tmp_path)]
    assert agreement.main(args) == 0
    result = json.loads((tmp_path / "agreement.json").read_text())
    row = json.loads((tmp_path / "docs.jsonl").read_text())
    assert result["documents"] == 1 and -1 <= result["spearman_median"] <= 1
    assert len(row["cells"]) == 3 * 4  # bands of 3, 3, 2 layers x (sink, 2 doc regions, instruction): plain prompt
    before = (tmp_path / "docs.jsonl").read_bytes()
    assert agreement.main(args) == 0 and (tmp_path / "docs.jsonl").read_bytes() == before
    assert (tmp_path / "attribution_agreement.png").is_file()
