"""Paired comparison of runs: DeLong against an independent O(mn) implementation, the paired
bootstrap against an explicit loop over the same resamples, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pneumolib.base.metrics import bootstrap_indices
from pneumolib.cli import main
from pneumolib.evaluate.compare import compare_runs, delong, verdicts


def _naive_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong (1988) as written: psi over every (positive, negative) pair -> (diff, var)."""
    comps = []
    for s in (a, b):
        x, z = s[y == 1][:, None], s[y == 0][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(1), psi.mean(0)))  # V10 per positive, V01 per negative
    m, n = int(y.sum()), int((1 - y).sum())
    s10 = np.cov(np.vstack([comps[0][0], comps[1][0]]))
    s01 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return comps[0][0].mean() - comps[1][0].mean(), var


def _scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    a = np.round(y * 1.0 + rng.normal(0, 1, n), 1)  # rounded: ties, as real scores have
    b = np.round(y * 0.6 + 0.5 * a + rng.normal(0, 1, n), 1)  # correlated with a
    return y, 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_pairwise_definition_and_sklearn(seed):
    y, a, b = _scores(seed)
    got = delong(y, a, b)
    diff, var = _naive_delong(y, a, b)
    assert got["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert got["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert got["diff"] == pytest.approx(diff, abs=1e-12)
    assert got["se"] ** 2 == pytest.approx(var, rel=1e-9)
    assert 0 <= got["p_value"] <= 1


def test_delong_of_a_run_with_itself_is_no_difference():
    y, a, _ = _scores(3)
    got = delong(y, a, a)
    assert got["diff"] == 0 and got["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong([1, 0, 0], [0.9, 0.1, 0.2], [0.8, 0.3, 0.1])


def _run(folder: Path, ids, y, p) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame({"patientId": ids, "prob": p, "target": y}).to_csv(
        folder / "predictions_test.csv", index=False
    )
    return folder


def test_compare_runs_paired_ci_equals_an_explicit_loop(tmp_path):
    y, a, b = _scores(4)
    ids = [f"p{i}" for i in range(len(y))]
    ra = _run(tmp_path / "finetune", ids, y, a)
    order = np.random.default_rng(0).permutation(len(y))  # another row order: joined by id
    rb = _run(tmp_path / "scratch", [ids[i] for i in order], y[order], b[order])
    out = compare_runs([ra, rb], "test", n_boot=300, seed=7)
    pair = out["pairs"].iloc[0]
    idx = bootstrap_indices(len(y), 300, 7)  # the resamples compare_runs shares between runs
    diffs = [roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]) for i in idx]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert pair["roc_auc_diff_lo"] == pytest.approx(lo, abs=1e-12)
    assert pair["roc_auc_diff_hi"] == pytest.approx(hi, abs=1e-12)
    assert pair["roc_auc_diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert pair["delong_p"] == pytest.approx(delong(y, a, b)["p_value"])
    assert list(out["runs"]["run"]) == ["finetune", "scratch"]
    unpaired = np.percentile([roc_auc_score(y[i], a[i]) for i in idx], 97.5) - np.percentile(
        [roc_auc_score(y[i], b[i]) for i in idx], 2.5
    )
    assert hi - lo < 2 * unpaired  # pairing removes the patients' shared variation


def test_compare_refuses_runs_of_other_caches(tmp_path, capsys):
    y, a, b = _scores(5, n=40)
    ids = [f"p{i}" for i in range(40)]
    ra = _run(tmp_path / "a", ids, y, a)
    rb = _run(tmp_path / "b", ids, 1 - y, b)
    rc = _run(tmp_path / "c", [f"q{i}" for i in range(40)], y, b)
    with pytest.raises(ValueError, match="disagree on the targets"):
        compare_runs([ra, rb])
    with pytest.raises(ValueError, match="share no test patient"):
        compare_runs([ra, rc])
    assert main(["compare", "--run", str(ra), "--run", str(rb)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_compare_command_prints_both_tables(tmp_path, capsys):
    y, a, b = _scores(6, n=120)
    ids = [f"p{i}" for i in range(120)]
    runs = [_run(tmp_path / n, ids, y, p) for n, p in (("finetune", a), ("scratch", b))]
    assert main(["compare", "--run", str(runs[0]), "--run", str(runs[1]), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "finetune: AUC" in out and "finetune - scratch: AUC" in out and "DeLong p" in out


def test_verdicts_follow_the_paired_interval():
    """A pair whose AUC interval excludes 0 is called a difference; one that includes 0 is not."""
    pairs = pd.DataFrame(
        [
            {
                "a": "A",
                "b": "B",
                "roc_auc_diff": 0.1,
                "roc_auc_diff_lo": 0.02,
                "roc_auc_diff_hi": 0.2,
            },
            {
                "a": "A",
                "b": "C",
                "roc_auc_diff": -0.1,
                "roc_auc_diff_lo": -0.2,
                "roc_auc_diff_hi": -0.01,
            },
            {
                "a": "B",
                "b": "C",
                "roc_auc_diff": 0.01,
                "roc_auc_diff_lo": -0.05,
                "roc_auc_diff_hi": 0.07,
            },
        ]
    )
    got = verdicts({"pairs": pairs})
    assert got[0].startswith("A ranks these patients better than B")
    assert got[1].startswith("C ranks these patients better than A")
    assert got[2].startswith("B and C are not shown to differ")
