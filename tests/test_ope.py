"""Off-policy estimators against hand computations and a simulation with a known truth,
and `intently eval ope` on the Open Bandit Dataset sample against its published figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intently import cli
from intently.learn import obd
from intently.learn.ope import LoggedFeedback, estimate, estimate_with_interval
from support import shared_data


def small() -> LoggedFeedback:
    return LoggedFeedback(
        rewards=np.array([1.0, 0.0, 1.0, 0.0]),
        propensities=np.array([0.5, 0.5, 0.25, 0.25]),
        target=np.array([1.0, 0.0, 0.5, 0.5]),
        model_logged=np.array([0.6, 0.2, 0.4, 0.1]),
        model_expected=np.array([0.5, 0.5, 0.3, 0.3]),
    )


def test_estimators_equal_their_formulas() -> None:
    feedback = small()
    w = np.array([2.0, 0.0, 2.0, 2.0])
    r = feedback.rewards
    assert estimate(feedback, "ips") == pytest.approx((w * r).mean())  # 1.0
    assert estimate(feedback, "snips") == pytest.approx((w * r).sum() / w.sum())  # 2/3
    assert estimate(feedback, "dm") == pytest.approx(0.4)
    correction = w * (r - np.array([0.6, 0.2, 0.4, 0.1]))
    assert estimate(feedback, "dr") == pytest.approx(0.4 + correction.mean())
    interval = estimate_with_interval(feedback, "ips", resamples=200)
    assert interval.low <= interval.value <= interval.high


def test_ips_and_dr_recover_a_known_policy_value_from_a_random_log() -> None:
    """Uniform logging over 5 actions, a deterministic candidate; the truth is known."""
    rates = np.array([0.1, 0.5, 0.2, 0.05, 0.3])
    rng = np.random.default_rng(3)
    n = 200_000
    actions = rng.integers(0, 5, n)
    rewards = (rng.random(n) < rates[actions]).astype(float)
    target_action = 1  # the candidate always picks action 1: its value is 0.5
    wrong_model = np.full(5, 0.2)  # DR must stay right with a wrong model
    feedback = LoggedFeedback(
        rewards=rewards,
        propensities=np.full(n, 0.2),
        target=(actions == target_action).astype(float),
        model_logged=wrong_model[actions],
        model_expected=np.full(n, wrong_model[target_action]),
    )
    assert estimate(feedback, "ips") == pytest.approx(0.5, abs=0.01)
    assert estimate(feedback, "snips") == pytest.approx(0.5, abs=0.01)
    assert estimate(feedback, "dr") == pytest.approx(0.5, abs=0.01)
    assert estimate(feedback, "dm") == pytest.approx(0.2)  # only as good as its model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rewards": np.array([np.nan, 0, 1, 0])}, "finite"),
        ({"propensities": np.array([0.0, 0.5, 0.5, 0.5])}, r"\(0, 1\]"),
        ({"target": np.array([1.5, 0, 0, 0])}, r"\[0, 1\]"),
        ({"target": np.array([1.0])}, "one entry per"),
    ],
)
def test_bad_logs_are_refused(change: dict[str, np.ndarray], message: str) -> None:
    fields = {**small().__dict__, **change}
    with pytest.raises(ValueError, match=message):
        LoggedFeedback(**fields)


def test_an_empty_log_and_an_unknown_estimator_are_refused() -> None:
    with pytest.raises(ValueError, match="no logged decision"):
        LoggedFeedback(np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate(small(), "magic")
    without_model = LoggedFeedback(np.array([1.0]), np.array([0.5]), np.array([1.0]))
    with pytest.raises(ValueError, match="reward model"):
        estimate(without_model, "dr")


def test_bernoulli_ts_simulation_puts_each_position_on_one_item() -> None:
    alpha, beta = np.array([50.0, 1.0, 1.0, 1.0]), np.array([1.0, 50.0, 50.0, 50.0])
    distribution = obd.bernoulli_ts_distribution(alpha, beta, simulations=5000)
    assert distribution.sum(axis=0) == pytest.approx(np.ones(3))
    assert distribution[0, 0] > 0.99  # the one good item leads almost always
    assert distribution[0, 1:].sum() < 0.01


def test_eval_ope_on_the_open_bandit_dataset_matches_the_published_figures() -> None:
    result = CliRunner().invoke(
        cli.main, ["eval", "ope", "--obd", str(shared_data("obd")), "--campaign", "all", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    shipped = report["shipped_action_distribution"]
    assert shipped["ips_relative"] == pytest.approx(1.1981263157894735, abs=1e-9)
    assert shipped["snips_relative"] == pytest.approx(1.2567981792713037, abs=1e-9)
    assert report["simulated_action_distribution"]["ips_relative"] == pytest.approx(1.198, abs=0.01)
    assert report["ground_truth_bts_mean_reward"] == pytest.approx(0.0042)
    for name in ("ips", "snips", "dm", "dr"):
        found = report["estimators"][name]
        low, high = found["ci95"]
        assert low <= found["value"] <= high
        assert found["relative_error"] == pytest.approx(abs(found["value"] - 0.0042) / 0.0042)


def test_eval_ope_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "random" / "all").mkdir(parents=True)
    (tmp_path / "random" / "all" / "all.csv").write_text("item_id,position\n1,1\n")
    result = CliRunner().invoke(cli.main, ["eval", "ope", "--obd", str(tmp_path)])
    assert result.exit_code == 1
    assert "needs the columns" in result.output
    assert "Traceback" not in result.output


def test_direct_method_sums_the_candidates_distribution_over_every_item() -> None:
    """Two items, one position used: DM is the model's reward of each item weighted by the
    candidate's probability of it, including an item the log never showed."""
    log = obd.BanditLog(
        items=np.array([0, 0, 0, 0]), positions=np.array([0, 0, 0, 0]),
        clicks=np.array([1.0, 0.0, 0.0, 0.0]), propensities=np.full(4, 0.5), n_items=1,
    )  # fmt: skip
    distribution = np.array([[0.25, 0.5, 0.5], [0.75, 0.5, 0.5]])  # item 1 never logged
    model = obd.reward_model(log, 2, smoothing=0.0)
    assert model[:, 0].tolist() == [0.25, 0.25]  # the unseen item gets the overall rate
    feedback = obd.feedback_for(log, distribution, model)
    assert estimate(feedback, "dm") == pytest.approx(0.25 * 0.25 + 0.75 * 0.25)


@pytest.mark.parametrize(
    ("propensity", "message"), [("0", "propensity"), ("nan", "propensity"), ("2", "propensity")]
)
def test_eval_ope_refuses_bad_logs_by_name(tmp_path: Path, propensity: str, message: str) -> None:
    source = shared_data("obd")
    for campaign_dir in ("random/all", "bts/all"):
        (tmp_path / campaign_dir).mkdir(parents=True)
        text = (source / campaign_dir / "all.csv").read_text().splitlines()
        header, first = text[0], text[1].split(",")
        first[header.split(",").index("propensity_score")] = propensity
        (tmp_path / campaign_dir / "all.csv").write_text("\n".join([header, ",".join(first),
                                                                    *text[2:]]))  # fmt: skip
    (tmp_path / "prior_bts.yaml").write_text((source / "prior_bts.yaml").read_text())
    result = CliRunner().invoke(cli.main, ["eval", "ope", "--obd", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_eval_ope_refuses_a_distribution_of_the_wrong_shape(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(shared_data("obd"), tmp_path / "obd")
    (tmp_path / "obd" / "bts_action_dist_all.csv").write_text("0.5,0.5\n0.5,0.5\n")
    result = CliRunner().invoke(cli.main, ["eval", "ope", "--obd", str(tmp_path / "obd")])
    assert result.exit_code == 1
    assert "one column per position" in result.output
