"""The training levers (trainer/levers.py): the tie term and checkpoint selection by the walk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from gmcf.datasets import Dataset, load_dataset  # noqa: E402
from gmcf.trainer.fit import TrainConfig, fit_gmcf, train_classifier  # noqa: E402
from gmcf.trainer.levers import posterior_judge, tie_loss, walk_check  # noqa: E402
from gmcf.trainer.prepare import prepare  # noqa: E402


@pytest.fixture(scope="module")
def adult_3000() -> Dataset:
    ds = load_dataset("adult")
    return Dataset("adult-3000", ds.table.take(pa.array(range(0, 30000, 10))), ds.schema)


def test_tie_term_trains_the_decoder_toward_each_class_mean(adult_3000: Dataset) -> None:
    """The tie term moves the decoder so that a judge reads D(mu_c, z_u) as c, and leaves the
    judge's own parameters (encoder, means) to the paper's losses."""
    torch.set_num_threads(1)
    p = prepare(adult_3000, 0.2, 0)
    torch.manual_seed(0)
    from gmcf.trainer.model import GMCF

    model = GMCF(p.pre.width, p.pre.n_numeric, p.pre.cat_sizes)
    zu = model.encoder_u(torch.from_numpy(p.x_train[:256])).detach()

    # a judge that reads a row as approved when its first feature (age) is above 0.5
    def judge(xs: torch.Tensor) -> torch.Tensor:
        return 20.0 * (xs[:, 0] - 0.5)

    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    first = tie_loss(model, zu, judge).item()
    for _ in range(60):
        loss = tie_loss(model, zu, judge)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert tie_loss(model, zu, judge).item() < 0.2 * first
    with torch.no_grad():
        for c in (0, 1):
            rows = model.decoder(torch.cat([model.mu[c].expand(len(zu), -1), zu], 1))
            read_as = (rows[:, 0] > 0.5).float() if c else (rows[:, 0] < 0.5).float()
            assert read_as.mean() > 0.95, c
    # the posterior judge passes no gradient to the encoder or the means
    model.zero_grad()
    tie_loss(model, zu, posterior_judge(model)).backward()
    assert all(q.grad is None or not q.grad.any() for q in model.encoder.parameters())
    assert model.mu.grad is None or not model.mu.grad.any()
    assert any(q.grad is not None and q.grad.any() for q in model.decoder.parameters())


def test_select_by_walk_checks_the_walk_with_f(adult_3000: Dataset) -> None:
    torch.set_num_threads(1)
    p = prepare(adult_3000, 0.2, 0)
    cfg = TrainConfig(epochs=12, classifier_epochs=20, classifier_restarts=1, select_by="walk")
    clf = train_classifier(p.x_train, p.y_train, cfg)

    def score(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clf(torch.from_numpy(x)).numpy()

    y_hat = (score(p.x_train) >= 0.5).astype(np.int64)
    n_val = 300
    walk = walk_check(p.pre, p.x_train[:n_val], score)
    model, hist = fit_gmcf(
        p.x_train[n_val:],
        y_hat[n_val:],
        p.pre.n_numeric,
        p.pre.cat_sizes,
        cfg,
        validation=(p.x_train[:n_val], y_hat[:n_val]),
        walk=walk,
    )
    assert [c["epoch"] for c in hist.checks] == [10, 12]
    for c in hist.checks:
        assert 0.0 <= c["walk_validity"] <= 1.0
        expected = (
            (1 - c["walk_validity"]) + 0.1 * c["walk_l2"] + 10 * max(0.0, 0.9 - c["agreement"])
        )
        assert c["score"] == pytest.approx(expected)
    best = min(hist.checks, key=lambda c: c["score"])
    assert hist.selected_epoch == best["epoch"]
    # the selected weights give the recorded walk figures
    assert walk(model)["walk_validity"] == pytest.approx(best["walk_validity"])
