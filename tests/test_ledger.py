"""The claims ledger: verdicts with intervals over seeds, kinds of rows counted apart, provenance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trajlib.paper.ledger import claim, headline, render
from trajlib.paper.verdict import judge, t_interval


def test_the_interval_is_students_t_and_the_verdict_has_three_outcomes():
    x = [0.10, 0.12, 0.08, 0.11, 0.09]
    mean, low, high = t_interval(x)
    half = stats.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert mean == pytest.approx(0.10) and high - mean == pytest.approx(half) and mean - low == pytest.approx(half)
    assert judge(x, direction=+1).verdict == "agrees"
    assert judge(x, direction=-1).verdict == "disagrees"
    assert judge([0.1, -0.1, 0.05], direction=+1).verdict == "inconclusive"   # straddles zero
    one = judge([0.5], direction=+1)
    assert one.verdict == "inconclusive" and math.isnan(one.low) and one.n == 1  # one seed: no interval
    with pytest.raises(ValueError, match="direction"):
        judge(x, direction=0)


def _doc(name, claims, preset="laptop"):
    return {"notebook": name, "title": name, "preset": preset, "claims": claims}


def test_the_headline_counts_paper_claims_only_and_each_kind_gets_its_table():
    results = [
        _doc("01-a", [claim("up", paper="higher", source="A2", effects=[1.0, 1.1, 0.9], direction=+1),
                      claim("size", paper="0.5 %", source="ours", kind="property", ours=0.6)]),
        _doc("02-b", [claim("down", paper="lower", source="S", effects=[1.0, 1.2, 0.8], direction=-1),
                      claim("flat", paper="lower", source="I", effects=[0.1, -0.2, 0.05], direction=-1),
                      claim("sim", paper="oscillates", source="I", kind="mechanism", effects=[1, 2, 3], direction=+1)]),
    ]
    assert headline(results) == {"claims": 3, "agrees": 1, "disagrees": 1, "inconclusive": 1, "blocked": 0,
                                 "untested": 0}
    text = render(results)
    assert text.startswith("**Of 3 paper claims tested on trained networks, 1 agree, 1 disagree and 1 are inconclusive**")
    assert text.index("### Paper claims") < text.index("### The mechanism") < text.index("### Descriptive numbers")
    assert "higher (A2)" in text and "**S**: a secondary, machine-written summary" in text
    assert "[+1.000, " not in text and "n = 3" in text
    prop = results[0]["claims"][1]
    assert prop["verdict"] is None and prop["agrees"] is None


def test_a_row_must_say_where_the_paper_number_comes_from():
    with pytest.raises(TypeError):
        claim("x", paper="0.76", effects=[1, 2], direction=1)  # no source
    with pytest.raises(ValueError, match="source='paper'"):
        claim("x", paper="0.76", source="paper", effects=[1, 2], direction=1)


def test_a_claim_with_no_finite_effect_is_not_tested_rather_than_nan():
    row = claim("middle layers", paper="differ", source="A2", effects=[float("nan")], direction=+1)
    assert row["ours"] is None and row["verdict"] is None and row["effect"] is None
    assert "not computable" in row["note"]


def test_a_sensitivity_check_says_when_the_verdict_flips():
    from trajlib.paper.ledger import claim, sensitivity

    row = claim("MDS rises with width", paper="rises (A2)", source="A2", effects=[0.10, 0.12, 0.11], direction=+1)
    assert row["verdict"] == "agrees"
    sensitivity(row, {"fixed learning rate": [-0.05, 0.04, 0.01], "uniform schedule": [0.09, 0.10, 0.12]})
    assert row["verdict"] == "agrees"  # the row's own verdict is unchanged
    assert row["sensitivity"]["fixed learning rate"]["verdict"] == "inconclusive"
    assert row["sensitivity"]["uniform schedule"]["verdict"] == "agrees"
    assert "fixed learning rate: inconclusive" in row["note"] and row["note"].count("(the verdict flips)") == 1
    untested = claim("x", paper="y", source="A2", effects=[float("nan")], direction=+1)
    assert "sensitivity" not in sensitivity(untested, {"other": [1.0, 2.0]})


def test_paired_differences_pair_by_seed_and_skip_unpaired_seeds():
    from trajlib.paper.verdict import paired_difference

    values = {(32, 0): 0.5, (32, 1): 0.6, (32, 2): 0.7, (128, 0): 0.9, (128, 2): 0.4}
    d = paired_difference(values, 32, 128)
    assert list(d.index) == [0, 2] and np.allclose(d.to_numpy(), [0.4, -0.3])


def test_uniform_checkpoints_keep_the_multiples_and_match_a_direct_gram():
    from trajlib import hallmarks as H
    from trajlib.paper.runs import uniform_checkpoints
    from trajlib.record import log_linear_steps
    from trajlib.stats import GramStats

    steps = np.array(log_linear_steps(60, every=20))
    rng = np.random.default_rng(1)
    X = np.cumsum(rng.normal(size=(len(steps), 40)), axis=0)
    st = GramStats(steps, np.full(len(steps), np.nan), {"all": H.gram_from_checkpoints(X)}, {"all": 40})
    u = uniform_checkpoints(st, 20)
    keep = steps % 20 == 0
    assert list(u.steps) == [0, 20, 40, 60] and len(steps) > 4
    assert np.allclose(u["all"], H.gram_from_checkpoints(X[keep]), rtol=1e-9, atol=1e-9)


def test_a_row_whose_inputs_the_audit_rejects_is_blocked_not_judged():
    """A claim over public checkpoints that the suite audit rejected carries the status "blocked
    by an upstream data defect", counted apart, whatever its effects would have said."""
    from trajlib.paper.pythia import blocked_reason

    why = blocked_reason({"70m": [], "2.8b": [f"step{s}" for s in range(76)]}, 154)
    assert why == "pythia-2.8b: 76 of 154 revisions rejected by the audit"
    assert blocked_reason({"70m": ["step2"]}, 154) is None
    row = claim("up", paper="higher", source="A2", effects=[1.0, 1.1, 0.9], direction=+1, blocked=why)
    assert row["verdict"] == "blocked" and row["effect"] is None and row["agrees"] is None
    assert "blocked by an upstream data defect: pythia-2.8b" in row["note"]
    results = [_doc("04-scale", [row, claim("ok", paper="x", source="A2", effects=[1.0, 1.2], direction=+1)])]
    h = headline(results)
    assert h["blocked"] == 1 and h["agrees"] + h["disagrees"] + h["inconclusive"] == 1
    text = render(results)
    assert "1 are blocked by an upstream data defect" in text and "| blocked by an upstream data defect |" in text
