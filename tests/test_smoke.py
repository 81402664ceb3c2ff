import numpy as np

import gpunet as gn


def test_fit_and_score_tiny_problem(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    net = gn.MLP([4, 16, 2], seed=0)
    net.fit(X, y, epochs=30, batch_size=16, lr=0.1, progress=False)
    assert net.score(X, y) > 0.95
