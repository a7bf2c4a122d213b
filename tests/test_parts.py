"""The trainer's parts on their own: the best-checkpoint rule and early stopping (pure), the callbacks, the
evaluator's order, the plugins key."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from afqmc.config.schema import check_config
from afqmc.errors import ConfigError
from afqmc.training.callbacks import Callback, Callbacks, EarlyStoppingCallback, ModelSummary
from afqmc.training.evaluator import Evaluator, logits_of
from afqmc.training.rules import BestRule, EarlyStopping

from .conftest import compose_cfg


def test_best_rule_needs_a_real_gain_in_the_metrics_direction():
    f1, loss = BestRule("f1_macro"), BestRule("loss")
    assert f1.gain(0.5, None) == math.inf == loss.gain(9.0, None)  # the first evaluation is the best so far
    assert f1.gain(0.6, 0.5) == pytest.approx(0.1) and f1.gain(0.4, 0.5) == pytest.approx(-0.1)
    assert loss.gain(0.4, 0.5) == pytest.approx(0.1) and loss.gain(0.6, 0.5) == pytest.approx(-0.1)
    # the same predictions summed in another order: no gain
    assert f1.gain(0.6933333333333334, 0.6933333333333332) == 0.0


def test_early_stopping_counts_evaluations_without_a_gain_above_min_delta():
    rule = EarlyStopping(patience=2, min_delta=0.01)
    assert rule.count(0, 0.005) == 1 and rule.count(1, 0.005) == 2 and rule.count(1, 0.02) == 0
    assert not rule.stops(1) and rule.stops(2)
    assert not EarlyStopping(patience=None).stops(100)


def test_early_stopping_callback_stops_the_run_at_its_patience():
    state = SimpleNamespace(evals_without_gain=0, stopped_early=None, best={"metric": "loss", "value": 0.5})
    trainer = SimpleNamespace(state=state, when=lambda record: f"epoch {record['epoch']}")
    callback = EarlyStoppingCallback(EarlyStopping(patience=2, min_delta=0.0))
    for step, gain in ((1, math.inf), (2, 0.0), (3, -0.1)):
        callback.on_evaluate(trainer, {"epoch": step, "step": step}, gain)
    assert state.evals_without_gain == 2 and state.stopped_early == {"epoch": 3, "step": 3}


def test_callbacks_are_told_in_order_and_may_hear_only_some_events():
    heard = []

    class Steps(Callback):
        def on_train_step(self, trainer, record):
            heard.append(("steps", record["step"]))

    class Ends(Callback):
        def on_end(self, trainer, summary):
            heard.append(("ends", summary["status"]))

    callbacks = Callbacks([Steps(), Ends(), Steps()])
    callbacks.emit("on_train_step", None, {"step": 1})
    callbacks.emit("on_evaluate", None, {"step": 1}, 0.0)  # nobody listens: nothing happens
    callbacks.emit("on_end", None, {"status": "completed"})
    assert heard == [("steps", 1), ("steps", 1), ("ends", "completed")]


def test_model_summary_lists_modules_to_its_depth(caplog):
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 2)))
    with caplog.at_level(logging.INFO):
        ModelSummary(depth=1).on_train_start(SimpleNamespace(is_main=True, model=model))
    text = caplog.text
    assert "Sequential: 26 parameters (26 trained)" in text and "  0: 16 parameters" in text
    assert "  1: 10 parameters" in text and "1.0" not in text  # depth 1: not the inner Linear


def test_evaluator_returns_logits_in_split_order_whatever_the_batch_order():
    model = nn.Linear(2, 3)

    class Output:  # an output with .logits, as transformers' models return
        def __init__(self, logits):
            self.logits = logits

    x = torch.randn(5, 2)
    batches = [{"x": x[[4, 1]], "index": torch.tensor([4, 1])}, {"x": x[[0, 3, 2]], "index": torch.tensor([0, 3, 2])}]
    for forward in (lambda x: model(x), lambda x: Output(model(x))):
        evaluator = Evaluator(_Module(forward), torch.device("cpu"))
        indices, logits, labels = evaluator.forward_all([dict(b) for b in batches])
        assert indices.tolist() == [0, 1, 2, 3, 4] and labels is None
        torch.testing.assert_close(logits, model(x).detach())
    assert logits_of(torch.ones(2)).tolist() == [1.0, 1.0]


class _Module(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self._forward = forward

    def forward(self, **batch):
        return self._forward(**batch)


@pytest.mark.parametrize("value", ["a_module", "[1]", "['']"])
def test_the_plugins_key_is_a_list_of_module_names(value):
    with pytest.raises(ConfigError, match=r"^plugins=.* is invalid; expected null or a list of module names$"):
        check_config(compose_cfg(["experiment=smoke", f"plugins={value}"]))


def test_an_option_added_since_a_run_was_recorded_is_no_change_but_a_removed_one_is():
    from afqmc.config.identity import config_changes

    assert config_changes({"optimizer.lr": 0.1}, {"optimizer.lr": 0.1, "model.new_option": False}) == []
    assert config_changes({"optimizer.lr": 0.1, "model.old": 1}, {"optimizer.lr": 0.1}) == ["model.old: 1 -> None"]
    assert config_changes({"optimizer.lr": 0.1}, {"optimizer.lr": 0.2}) == ["optimizer.lr: 0.1 -> 0.2"]
    # model.pooling=pooler, the default before model.pooling=auto, is auto's old name
    assert config_changes({"model.pooling": "pooler"}, {"model.pooling": "auto"}) == []
    assert config_changes({"optimizer.betas": [0.9, 0.999]}, {"optimizer.betas": [0.9, 0.999]}) == []
    assert config_changes({"model.pooling": "pooler"}, {"model.pooling": "cls"}) == ["model.pooling: 'pooler' -> 'cls'"]
