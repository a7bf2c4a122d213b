"""afqmc/training/metrics.py against scikit-learn's reference implementation, on random binary and multi-class cases."""

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from afqmc.training.metrics import classification_metrics


@pytest.mark.parametrize("num_labels", [2, 3, 15])
@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_scikit_learns(num_labels, seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 200, (1,), generator=g))
    labels = torch.randint(num_labels, (n,), generator=g)
    # mostly right, so that every kind of cell of the confusion matrix occurs, some classes never predicted
    preds = torch.where(torch.rand(n, generator=g) < 0.6, labels, torch.randint(num_labels, (n,), generator=g))
    y, p = labels.tolist(), preds.tolist()
    every = list(range(num_labels))
    got = classification_metrics(preds, labels, num_labels)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert got["f1_macro"] == pytest.approx(f1_score(y, p, labels=every, average="macro", zero_division=0))
    if num_labels == 2:
        assert got["precision_pos"] == pytest.approx(precision_score(y, p, zero_division=0))
        assert got["recall_pos"] == pytest.approx(recall_score(y, p, zero_division=0))
        assert got["f1_pos"] == pytest.approx(f1_score(y, p, zero_division=0))
    else:
        assert "f1_pos" not in got


def test_a_class_never_predicted_nor_present():
    labels, preds = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    got = classification_metrics(preds, labels, 3)
    assert got["f1_macro"] == pytest.approx(
        f1_score([0, 0, 1], [0, 1, 1], labels=[0, 1, 2], average="macro", zero_division=0)
    )
