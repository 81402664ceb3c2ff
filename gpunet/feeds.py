"""Training data that reach the device a batch at a time: memory maps and streams.

``fit`` moves in-memory data to the device once and gathers each batch there
(``gpunet.train.batches``). Data that are not in memory, or do not fit on the device, come
through a feed instead: each batch is made on the host (``RowsFeed``: the batch's rows of a
``numpy.memmap`` read and converted to the model's dtype; ``StreamFeed``: a ``BatchStream``'s
batch checked), written into buffers the backend's uploader hands out, and given to the step.
On a GPU the uploader's buffers are page-locked and copied on a stream of their own, so the
copy of one batch overlaps the step before it (``CupyBackend.batch_uploader``); on the CPU
the buffers are the step's arrays.

A feed's ``epoch`` yields what ``batches`` yields, ``(x, targets, row_scale, batch_weight)``
on the backend, valid until the next batch is drawn. A stream's size is known only once an
epoch has passed: its ``totals()`` then give the figures the history needs.
"""
from __future__ import annotations

import numpy as np

from .losses import row_scale_from_weights
from .scaling import RunningMoments
from .validation import check_sample_weight

__all__ = ["RowsFeed", "StreamFeed", "epoch_order", "with_weights"]


def epoch_order(net, n, shuffle):
    """The order of an epoch's examples: drawn from the model's shuffle generator, or as
    they are."""
    return net.shuffle_rng.permutation(n) if shuffle else np.arange(n)


def with_weights(device, weighted):
    """(x, targets, row_scale, batch_weight) of a batch's backend arrays (x, targets[,
    weights]): a weighted batch's sum of weights and the losses' row scale from it."""
    if not weighted:
        return device[0], device[1], None, None
    batch_weight = device[2].sum()
    return device[0], device[1], row_scale_from_weights(device[2], batch_weight), batch_weight


def _target_dtype(net, targets):
    """What the step reads: labels as int64, anything else in the model's dtype
    (``MLP.device_targets``' rule)."""
    return targets.dtype if targets.dtype.kind == "i" else net.dtype


class RowsFeed:
    """A host array (a memory map) read a batch of rows at a time, in fit's shuffled order.

    Only the batch's rows are read (in increasing order, so the pages come in file order,
    then put in the batch's order); targets and weights, one value or row per example, are
    held in memory. Peak memory is a few batches, not the array."""

    def __init__(self, net, x_rows, targets, weights, batch_size, shuffle, input_scaling):
        self.net = net
        self.x_rows = x_rows
        self.targets = np.asarray(targets, dtype=_target_dtype(net, targets))
        self.weights = None if weights is None else np.asarray(weights, dtype=net.dtype)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.input_scaling = input_scaling
        self.n = x_rows.shape[0]
        self.steps_per_epoch = -(-self.n // batch_size)
        self._uploader = None

    def epoch(self, epoch: int):
        """The epoch's batches in fit's (shuffled) order: what ``batches`` yields."""
        order = epoch_order(self.net, self.n, self.shuffle)
        return self.batches_for(order[start:start + self.batch_size] for start in range(0, self.n, self.batch_size))

    def batches_for(self, index_arrays):
        """A batch for each array of row indices (non-empty), in turn (a distributed rank's
        shards, say)."""
        net = self.net
        if self._uploader is None:
            self._uploader = net.backend.batch_uploader()
        uploader = self._uploader
        n_features = self.x_rows.shape[1]
        for idx in index_arrays:
            if idx.shape[0] == 0:
                continue
            rows = idx.shape[0]
            specs = [((rows, n_features), net.dtype), ((rows, *self.targets.shape[1:]), self.targets.dtype)]
            if self.weights is not None:
                specs.append(((rows,), net.dtype))
            host = uploader.host_buffers(specs)
            net.batch_features(self._rows(idx), host[0], self.input_scaling)
            np.take(self.targets, idx, axis=0, out=host[1])
            if self.weights is not None:
                np.take(self.weights, idx, out=host[2])
            yield with_weights(uploader.upload(), self.weights is not None)
            uploader.release()

    def _rows(self, idx):
        """``x_rows[idx]``, read in file order."""
        if self.shuffle or idx[-1] - idx[0] + 1 != idx.shape[0]:
            sorter = np.argsort(idx, kind="stable")
            rows = np.empty((idx.shape[0], self.x_rows.shape[1]), self.x_rows.dtype)
            rows[sorter] = self.x_rows[idx[sorter]]
            return rows
        return self.x_rows[idx[0]:idx[-1] + 1]


class StreamFeed:
    """A ``BatchStream``'s batches, each checked as it arrives: features as the model's
    input (its feature names and input scaling applied), targets through its classes,
    weights non-negative. The epoch's totals are counted as the batches pass."""

    def __init__(self, net, stream, learned):
        self.net = net
        self.stream = stream
        self.learned = learned
        self.n = None
        self.steps_per_epoch = stream.n_batches
        self._totals = None
        self._uploader = None

    def totals(self):
        """(examples, the loss's denominator, a regressor's per-output target spread) of the
        last epoch."""
        return self._totals

    def epoch(self, epoch: int):
        net = self.net
        if self._uploader is None:
            self._uploader = net.backend.batch_uploader()
        uploader = self._uploader
        n, weight_sum = 0, 0.0
        moments = None if net.is_classifier else RunningMoments(net.sizes[-1])
        index = -1
        for index, batch in enumerate(self.stream.epoch(epoch)):
            x, targets, weights = self._checked(batch, f"batch {index + 1} of epoch {epoch + 1}")
            specs = [(x.shape, net.dtype), (targets.shape, _target_dtype(net, targets))]
            if weights is not None:
                specs.append((weights.shape, net.dtype))
            host = uploader.host_buffers(specs)
            host[0][...] = x
            host[1][...] = targets
            if weights is not None:
                host[2][...] = weights
            n += x.shape[0]
            weight_sum += x.shape[0] if weights is None else float(weights.sum())
            if moments is not None:
                moments.add(targets.reshape(targets.shape[0], -1))
            yield with_weights(uploader.upload(), weights is not None)
            uploader.release()
        if index < 0:
            raise ValueError(f"the BatchStream gave no batches in epoch {epoch + 1}")
        self._totals = (n, weight_sum, None if moments is None else moments.squares)

    def _checked(self, batch, where):
        """(features, targets, weights or None) of one batch, checked as the model's."""
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise TypeError(f"{where} is a {type(batch).__name__}; a BatchStream yields (X, y) or (X, y, w)")
        net, learned = self.net, self.learned
        if net.is_classifier and learned.classes is None:
            labels = np.asarray(batch[1]) if not hasattr(batch[1], "to_numpy") else batch[1].to_numpy()
            if labels.dtype.kind in "UOSb":
                raise TypeError(f"y of {where} holds label values ({labels.dtype}); a stream is not read ahead, "
                                "so pass MLP(classes=[...]) to say which output means which label")
        x = net.validate_features(batch[0], name=f"X of {where}", feature_names=learned.feature_names,
                                  input_scaling=learned.input_scaling)
        targets = net.validate_targets(batch[1], x.shape[0], name=f"y of {where}", classes=learned.classes)
        weights = None if len(batch) == 2 else check_sample_weight(batch[2], x.shape[0], name=f"w of {where}")
        return x, targets, weights
