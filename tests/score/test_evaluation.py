"""The report `m alora eval` displays, computed from scores alone (no model)."""

import pytest

from validora.core.calibration import scores_ece, threshold_for
from validora.core.metrics import classification_metrics
from validora.errors import ConfigError
from validora.score.evaluation import evaluation
from validora.score.readout import LabelScores

LABELS = ["ok", "bad"]
GOLD = ["ok", "bad", "ok", "bad"]
SCORES = [
    LabelScores("ok", {"ok": 0.9, "bad": 0.1}),
    LabelScores("bad", {"ok": 0.3, "bad": 0.7}),
    LabelScores("bad", {"ok": 0.4, "bad": 0.6}),
    LabelScores("bad", {"ok": 0.2, "bad": 0.8}),
]


def _report(**kwargs):
    metrics = classification_metrics(GOLD, [s.label for s in SCORES], LABELS)
    return evaluation(metrics, SCORES, GOLD, LABELS, temperature=1.5, lexical=None, **kwargs)


def test_the_report_holds_what_eval_shows():
    report = _report()
    assert report.ece == scores_ece(SCORES, GOLD) and report.threshold is None and report.curve() == []
    data = report.to_dict()
    assert data["ece"] == report.ece and data["temperature"] == 1.5 and data["lexical"] is None
    assert data["accuracy"] == report.metrics.accuracy and "threshold" not in data


def test_a_label_and_a_target_give_the_threshold():
    report = _report(label="bad", target_recall=1.0)
    points, positive = [s.probs["bad"] for s in SCORES], [g == "bad" for g in GOLD]
    assert report.threshold == threshold_for(points, positive, None, 1.0)
    assert report.to_dict()["threshold"] == report.threshold.to_dict("bad")
    assert [p.threshold for p in report.curve()] == sorted(points, reverse=True)


def test_an_unknown_label_is_named_as_an_option():
    with pytest.raises(ConfigError, match="label 'gearbox' is not one of") as err:
        _report(label="gearbox", target_recall=0.5)
    assert err.value.option == "label"
