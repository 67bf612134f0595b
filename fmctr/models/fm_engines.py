"""The FM's two training engines, behind one interface (fmctr.models.base.Engine):
`CpuEngine`, fused numba kernels over numpy arrays, and `TorchEngine`, EmbeddingBag +
autograd + a row-wise optimizer on any torch device. They compute the same updates
(tests/test_fm.py holds them to the same weights)."""

from __future__ import annotations

import numpy as np

from fmctr.hashing.tokens import Rows, is_ones, ones
from fmctr.models import ials, kernel
from fmctr.models.softmax import CatalogueIndex, softmax_gradients
from fmctr.models.weights import FMWeights, initial_factors, pack_seen, unpack_seen
from fmctr.tables import aligned_zeros, read_only, sparse_zeros


_NO_SECOND_STATE = np.zeros((1, 1), np.float32)  # (CpuEngine._second_state)


def _kernel_values(rows: Rows) -> np.ndarray:
    """The rows' values as the training kernels take them: none for one-hot rows
    (kernel._value)."""
    return rows.values[:0] if is_ones(rows.values) else rows.values


class CpuEngine:
    """Fused numba kernels over numpy arrays."""

    def __init__(self, w: FMWeights, cfg, threads: int, optimizer: dict | None = None, touched: int | None = None):
        """`touched`: about how many features training will meet, where that is known
        and the run starts from zero; the tables are then laid out for those rows
        alone (fmctr.tables.sparse_zeros: a small set's few rows, spread over a hashed
        table, would otherwise zero most of its huge pages - 0.1-0.8 s a run at bits
        22 here, whatever the rows)."""
        self.w = w
        self.cfg = cfg
        n, k = w.num_features, w.dim
        adam = cfg.optimizer == "adam"
        two_linear = cfg.optimizer in ("adam", "ftrl")
        self._few = touched is not None and optimizer is None
        zeros = (lambda shape: sparse_zeros(shape, touched)) if self._few else aligned_zeros
        linear1, linear2, factors1 = self._optimizer_arrays(optimizer, n, k, zeros)
        # Each feature's factors and their (first) optimizer state sit side by side in
        # one table row that starts on a 128-byte boundary: with dim 16 that is two
        # adjacent cache lines (one TLB entry, one DRAM page), where two separate
        # arrays starting 16 bytes into a page (numpy's large arrays) cost up to four
        # lines. w.factors and factor_state1 are views of this table. A fresh all-zero
        # table is not written here, so its pages still fault in when first used.
        self.table = zeros((n, 2 * k))
        # (from zero weights, every row not met in training stays zero: _refresh)
        self._from_zero = optimizer is None and not w.linear.any() and not w.bias.any()
        if w.factors.any():
            self._from_zero = False
            self.table[:, :k] = w.factors
        if factors1 is not None and factors1.any():
            self.table[:, k:] = factors1
        w.factors = self.table[:, :k]
        self.factor_state1 = self.table[:, k:]
        if not adam:
            self.factor_state2 = self.factor_state1
        # Each feature's linear weight, its optimizer state and its --l2-all share sit
        # side by side (one cache line where four arrays cost four misses); the
        # engine's arrays are views of this table (written only where not zero).
        self.meta = zeros((n, 4))
        for column, values in enumerate((w.linear, linear1, linear2)):
            if values is not None and values.any():
                self.meta[:, column] = values
        w.linear = self.meta[:, 0]
        self.linear_state1 = self.meta[:, 1]
        self.linear_state2 = self.meta[:, 2] if two_linear else self.linear_state1
        self.threads = threads
        self.lr = cfg.lr
        self.code = {"adagrad": kernel.ADAGRAD, "adam": kernel.ADAM, "ftrl": kernel.FTRL}[cfg.optimizer]
        self.ftrl = np.array([cfg.ftrl_alpha, cfg.ftrl_beta, cfg.l1, cfg.l2_linear], np.float64)
        # (the --l2-all shares, read by the kernels once set_counts turns them on: always
        # the table's column, so that the kernels are compiled for one layout of it)
        self.inv_counts = self.meta[:, 3]
        self.priors = np.array([cfg.l2_all_linear, cfg.l2_all_factors, 0.0], np.float64)
        self._identity = np.zeros(0, np.int64)
        self._buffers: dict[str, np.ndarray] = {}  # (_scratch)
        self._met_in_advance = False  # (meet_in_advance)
        self.shared = False  # the tables are averaged with other replicas' (replicated())
        self._scoring = self._snapshot = None
        self._catalogue: CatalogueIndex | None = None  # (train_softmax's, kept between its calls)

    def _optimizer_arrays(self, optimizer: dict | None, n: int, k: int, zeros) -> tuple:
        """Set the optimizer's state from `optimizer` (fmctr.models.fm_engines'
        optimizer_state) or fresh; returns the linear states and the factors' first
        state for the tables to take in (None where they start at zero)."""
        cfg = self.cfg
        adam, two_linear = cfg.optimizer == "adam", cfg.optimizer in ("adam", "ftrl")
        if optimizer is None:
            self.bias_state = np.zeros(2, np.float32)
            self.factor_state2 = zeros((n, k)) if adam else None
            self.seen_bits = pack_seen(np.zeros(n, np.bool_))
            self.counters = np.zeros(2, np.int64)
            return None, None, None
        self.bias_state = optimizer["bias"].copy()
        linear1, factors1 = optimizer["linear1"], optimizer["factors1"]
        self.factor_state2 = optimizer["factors2"] if adam else factors1
        self.seen_bits = pack_seen(optimizer["seen"])
        self.counters = np.array([optimizer["step"], 0], np.int64)
        return linear1, optimizer["linear2"] if two_linear else linear1, factors1

    def prepare(self, note) -> None:
        """Compile (or load from numba's cache) the training kernel now, on no rows,
        so that the first epoch's rows/s do not include it; `note` says so when the
        kernel was never compiled on this machine (about 15 s, once)."""
        if not kernel.cached("train_rows"):
            note("compiling the CPU training kernel (once on this machine; cached afterwards) ...")
        empty = Rows(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(1, np.int64), np.zeros(0, np.float32))
        self.train(empty, np.zeros(0, np.int64))

    def train(self, rows: Rows, order: np.ndarray) -> float:
        cfg = self.cfg
        rows, order = self._gather(rows, order)
        max_row = int(np.diff(rows.offsets).max(initial=0))
        return kernel.train_rows(
            *map(read_only, (rows.indices, _kernel_values(rows), rows.offsets, rows.labels, order)), cfg.batch_size,
            self.threads,
            self.w.bias, self.w.linear, self.table, self.w.dim,
            self.bias_state, self.linear_state1, self.linear_state2, self._second_state(),
            self.seen_bits[:0] if self._met_in_advance else self.seen_bits, max_row,
            self.code, self.lr, cfg.l2_linear, cfg.l2_factors, cfg.eps, 0.9, 0.999, self.counters,
            cfg.seed, cfg.init_std, cfg.adagrad_init, self.ftrl, self.inv_counts, self.priors,
        )

    def _second_state(self) -> np.ndarray:
        """The factors' second optimizer state for the kernels, which read it for Adam
        alone (its own contiguous table): for the others, a contiguous stand-in. numba
        compiles a kernel once per layout of its arguments, about 20 s for the training
        kernel; the others' state, a view of the table's columns, is not contiguous, so
        Adam, and the --dim 0 rival every default training tries (an empty view is
        contiguous), each compiled it again."""
        return self.factor_state2 if self.cfg.optimizer == "adam" else _NO_SECOND_STATE

    def train_pairs(self, rows: Rows, order: np.ndarray) -> float:
        """BPR on pairs of rows (2j the positive, 2j + 1 a negative; `order` indexes
        pairs): kernel.train_pairs, batch_size pairs an update."""
        cfg = self.cfg
        both = np.stack([2 * order, 2 * order + 1], axis=1).ravel()
        rows, _ = self._gather(rows, both)
        max_row = int(np.diff(rows.offsets).max(initial=0))
        return kernel.train_pairs(
            *map(read_only, (rows.indices, _kernel_values(rows), rows.offsets)), cfg.batch_size, self.threads,
            self.w.bias, self.w.linear, self.table, self.w.dim, self.linear_state1, self.linear_state2,
            self._second_state(), self.seen_bits, max_row, self.code, self.lr, cfg.l2_linear, cfg.l2_factors, cfg.eps,
            self.counters, cfg.seed, cfg.init_std, cfg.adagrad_init, self.ftrl, self.inv_counts, self.priors,
        )

    def train_softmax(self, positives, order: np.ndarray) -> float:
        """The full-catalogue softmax (fmctr.models.softmax) on positives[order] (their
        `context`, `items` and `catalogue`), batch_size positives an update: each
        batch's gradient, then one Adagrad step, with the touch L2, on every feature
        it touches (every catalogue item's). Returns the summed loss."""
        catalogue, total = positives.catalogue, 0.0
        if self._catalogue is None or self._catalogue.rows is not catalogue:
            self._catalogue = CatalogueIndex.of(catalogue)
        self.first_touch(self._catalogue.grouping.features)
        # (the users' features met once for all the batches, not batch by batch: nothing
        # reads a feature's factors before its batch, so the same weights)
        contexts = positives.context.take(order)
        self.first_touch(np.unique(contexts.indices).astype(np.int64))
        for lo in range(0, len(order), self.cfg.batch_size):
            batch = order[lo : lo + self.cfg.batch_size]
            context = contexts.slice(lo, lo + len(batch))
            grads = softmax_gradients(self.w, context, positives.items[batch], catalogue, self._catalogue)
            kernel.adagrad_rows(grads.features, grads.linear.astype(np.float32), grads.factors.astype(np.float32),
                                self.w.linear, self.linear_state1, self.table, self.w.dim, self.cfg.l2_linear,
                                self.cfg.l2_factors, self.lr, self.cfg.eps, self.cfg.adagrad_init)
            self.counters[0] += 1
            total += grads.loss
        return total

    def train_als(self, problem, order: np.ndarray) -> float:
        """One sweep of implicit ALS (fmctr.models.ials) over the positives' pattern:
        each feature's weights solved in turn, no rate, no optimizer state. Returns
        the loss's data part."""
        self.first_touch(np.union1d(problem.users.features, problem.items.features))
        return ials.sweep(self.w, problem, l2=self.cfg.l2_factors)

    def _gather(self, rows: Rows, order: np.ndarray) -> tuple[Rows, np.ndarray]:
        """The rows `order`, copied in that order (kernel.gather_offsets, then
        gather_indices into arrays of the size the offsets give), and the identity order
        over them: the same rows in the same order, so the same updates, but read front
        to back instead of at random."""
        n = len(order)
        order = read_only(order)
        offsets, labels = self._scratch("offsets", n + 1, np.int64), self._scratch("labels", n, np.float32)
        kernel.gather_offsets(read_only(rows.offsets), read_only(rows.labels), order, offsets, labels)
        nnz = int(offsets[-1])
        indices = self._scratch("indices", nnz, rows.indices.dtype)
        ones_only = is_ones(rows.values)
        values = ones(nnz) if ones_only else self._scratch("values", nnz, rows.values.dtype)
        kernel.gather_indices(read_only(rows.indices), read_only(rows.values), read_only(rows.offsets), order,
                              offsets, indices, values[:0] if ones_only else values)
        if len(self._identity) < n:
            self._identity = np.arange(n, dtype=np.int64)
        return Rows(indices, values, offsets, labels), self._identity[:n]

    def _scratch(self, name: str, n: int, dtype) -> np.ndarray:
        """n elements of a buffer kept between blocks (a block's gathered rows live only
        while train() runs): fresh arrays fault their pages in again at every block,
        from 3x to 30x the cost of writing pages already mapped, as the machine's huge
        pages come."""
        buffer = self._buffers.get(name)
        if buffer is None or len(buffer) < n or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(n + n // 8, dtype)
        return buffer[:n]

    def weights(self) -> FMWeights:
        """The weights with contiguous factors (the table interleaves them with their
        optimizer state): scoring compiled for contiguous rows sums in the same order
        as it will for the saved model."""
        if self._few:  # (only the rows met copied, into tables laid out for them)
            return self._refresh(None)
        return FMWeights(self.w.bias, self.w.linear, self._factors_copy())

    def _factors_copy(self) -> np.ndarray:
        """The factors (columns of the training table) as a table of their own, aligned
        for scoring (fmctr.models.weights.aligned_zeros)."""
        factors = aligned_zeros(self.w.factors.shape)
        np.copyto(factors, self.w.factors)
        return factors

    # A copy of the whole table per validation check (and another of the best weights)
    # cost more than the epochs on small data: with bits 22 the tables hold 4M rows
    # whatever the data, and 5,000 rows train in a few ms. So the copies below are
    # kept and brought up to date: only the rows met in training can have changed.

    @property
    def seen(self) -> np.ndarray:
        """A bool per feature: met in training. A read-only copy of the kernels' bitmap
        (seen_bits), so that a write to it fails instead of changing nothing."""
        seen = unpack_seen(self.seen_bits, self.w.num_features)
        seen.flags.writeable = False
        return seen

    def _changed_rows(self) -> np.ndarray | None:
        """The rows whose weights may differ from an earlier full copy: those met in
        training (no other row is ever written), or None (all) when they are most of
        the table or once the tables are shared with other replicas, whose averages
        change rows this engine never met."""
        if self.shared:
            return None
        if self._met_in_advance:
            return self._met if len(self._met) < self.w.num_features // 4 else None
        seen = self.seen
        rows = np.flatnonzero(seen)
        return rows if len(rows) < len(seen) // 4 else None

    def _refresh(self, copy: FMWeights | None) -> FMWeights:
        """`copy` (an earlier copy of this engine's weights, or None) made equal to them."""
        rows = self._changed_rows()
        if copy is None and (rows is None or not self._from_zero):
            return FMWeights(self.w.bias.copy(), self.w.linear.copy(), self._factors_copy())
        if copy is None:
            copy = FMWeights(np.zeros_like(self.w.bias), sparse_zeros(self.w.linear.shape, len(rows)),
                             sparse_zeros(self.w.factors.shape, len(rows)))
        for name in ("factors", "linear", "bias"):
            mine, theirs = getattr(copy, name), getattr(self.w, name)
            if rows is None or name == "bias":
                np.copyto(mine, theirs)
            else:
                mine[rows] = theirs[rows]
        copy.met = rows if self._from_zero else None
        return copy

    def scoring_weights(self) -> FMWeights:
        """weights(), but in a copy kept between calls. (The linear weights copied too:
        the table's column is non-contiguous, and scoring it compiled the scoring
        kernel a second time, 4-5 s, beside the saved models' contiguous ones.)"""
        self._scoring = self._refresh(self._scoring)
        return self._scoring

    def snapshot(self, previous: FMWeights | None = None) -> FMWeights:
        self._snapshot = self._refresh(previous if previous is self._snapshot else None)
        return self._snapshot

    def weights_finite(self) -> bool:
        rows = self._changed_rows()
        linear, factors = (self.w.linear, self.w.factors) if rows is None else (self.w.linear[rows], self.w.factors[rows])
        return bool(np.isfinite(self.w.bias).all() and np.isfinite(linear).all() and np.isfinite(factors).all())

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def set_counts(self, counts: np.ndarray, rows: int, met: np.ndarray | None = None) -> None:
        if self._few:  # (the features training meets are those counted: no other is read)
            met = np.flatnonzero(counts) if met is None else met
            self.meta[met, 3] = rows / np.maximum(counts[met], 1)  # (a catalogue item the count's draw missed: 0)
        else:
            self.meta[:, 3] = rows / np.maximum(counts, 1)
        self.priors[2] = 1.0  # (on)

    def first_touch(self, rows: np.ndarray) -> None:
        """Give the rows never met before their initial factors now, as the kernel
        would when it first meets them."""
        kernel.meet_rows(read_only(np.asarray(rows, np.int64)), self.seen_bits, self.table, self.w.dim,
                         self.cfg.seed, self.cfg.init_std)

    def meet_in_advance(self, counts: np.ndarray, met: np.ndarray | None = None) -> None:
        """Give every feature the training rows hold (counts > 0) its initial factors
        now, before the first epoch, so that train() need not check each feature of
        each row for a first meeting (a bit test per feature in the training loop,
        about 5-10% of an epoch). The engine must then train only on those rows: the
        rows met are then known (_changed_rows)."""
        met = np.flatnonzero(counts) if met is None else met
        self.first_touch(met)
        self._met_in_advance = True
        self._met = met

    def replicated(self) -> tuple[list, list]:
        """The factor table (factors and their first state side by side), the meta table
        (each linear weight and its state; the --l2-all share, the same on every rank,
        rides along), Adam's second factor state, and the bias with its state."""
        second = [self.factor_state2] if self.cfg.optimizer == "adam" else []
        self.shared = True
        return [self.table, self.meta] + second, [self.w.bias, self.bias_state]

    def optimizer_state(self) -> dict:
        """The optimizer's arrays (live, not copies; `seen` unpacked from the kernels'
        bitmap, a copy), as fmctr.models.modelfile stores them."""
        return {
            "kind": self.cfg.optimizer, "step": int(self.counters[0]), "bias": self.bias_state,
            "linear1": self.linear_state1, "linear2": self.linear_state2,
            "factors1": self.factor_state1, "factors2": self.factor_state2, "seen": self.seen,
        }


class TorchEngine:
    """EmbeddingBag model + autograd + row-wise optimizer, on any torch device."""

    def __init__(self, w: FMWeights, cfg, device: str, optimizer: dict | None = None):
        import torch

        from fmctr.models.torch_fm import FactorizationMachine, RowwiseOptimizer

        self.torch = torch
        self.device = device
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = FactorizationMachine.from_weights(w, device)
        ftrl = (cfg.ftrl_alpha, cfg.ftrl_beta, cfg.l1, cfg.l2_linear) if cfg.optimizer == "ftrl" else None
        groups = [
            {"params": [self.model.linear.bias], "l2": 0.0},
            {"params": [self.model.linear.weight.weight], "l2": cfg.l2_linear, "ftrl": ftrl},
        ]
        if self.model.pairwise is not None:
            groups.append({"params": [self.model.pairwise.embedding.weight], "l2": cfg.l2_factors})
        self.optimizer = RowwiseOptimizer(
            groups, kind=cfg.optimizer, lr=cfg.lr, eps=cfg.eps, initial_accumulator=cfg.adagrad_init
        )
        self.seen = torch.zeros(w.num_features, dtype=torch.bool, device=device)
        self.params = [g["params"][0] for g in groups]  # bias, linear, factors
        self.lr = cfg.lr
        self.inv_counts = None
        if optimizer is not None:
            self._load_optimizer(optimizer)

    def meet_in_advance(self, counts: np.ndarray, met: np.ndarray | None = None) -> None:
        """Nothing: this engine meets a batch's features as it gathers them."""

    def first_touch(self, rows: np.ndarray) -> None:
        """Give the rows never met before their initial factors now (init_new_rows)."""
        self.init_new_rows(self.torch.from_numpy(rows).to(self.device))

    def replicated(self) -> tuple[list, list]:
        """The linear and factor tables with their optimizer state, and the bias with its."""
        self.optimizer.init_state()
        tables, scalars = [], []
        for p in self.params:
            state = self.optimizer.state[p]
            group = [p.data, state["acc1"]] + ([state["acc2"]] if self._two_states(p) else [])
            (scalars if p is self.params[0] else tables).extend(group)
        return tables, scalars

    def _two_states(self, p) -> bool:
        """Whether parameter p's optimizer keeps a second state (Adam's v; FTRL's n
        for the linear weights) rather than one accumulator."""
        return self.cfg.optimizer == "adam" or (self.cfg.optimizer == "ftrl" and p is self.params[1])

    def _load_optimizer(self, optimizer: dict) -> None:
        t = self.torch
        n = self.seen.shape[0]
        self.seen = t.from_numpy(optimizer["seen"].copy()).to(self.device)
        self.optimizer.step_count = optimizer["step"]
        pairs = [(optimizer["bias"][:1], optimizer["bias"][1:2]),
                 (optimizer["linear1"].reshape(n, 1), optimizer["linear2"].reshape(n, 1)),
                 (optimizer["factors1"], optimizer["factors2"])]
        for p, (first, second) in zip(self.params, pairs):
            acc1 = t.from_numpy(np.array(first, np.float32)).to(self.device)
            acc2 = t.from_numpy(np.array(second, np.float32)).to(self.device) if self._two_states(p) else acc1
            self.optimizer.state[p] = {"acc1": acc1, "acc2": acc2}

    def optimizer_state(self) -> dict:
        n = self.seen.shape[0]

        def acc(p, key):
            state = self.optimizer.state.get(p)
            return np.zeros(tuple(p.shape), np.float32) if not state else state[key].detach().cpu().numpy()

        bias, linear = self.params[0], self.params[1]
        k = self.params[2].shape[1] if len(self.params) > 2 else 0
        factors = (lambda key: acc(self.params[2], key)) if k else (lambda key: np.zeros((n, 0), np.float32))
        return {
            "kind": self.cfg.optimizer, "step": self.optimizer.step_count, "seen": self.seen.cpu().numpy(),
            "bias": np.array([acc(bias, "acc1")[0], acc(bias, "acc2")[0]], np.float32),
            "linear1": acc(linear, "acc1").reshape(n), "linear2": acc(linear, "acc2").reshape(n),
            "factors1": factors("acc1"), "factors2": factors("acc2"),
        }

    def init_new_rows(self, indices) -> None:
        """Give rows met for the first time their initial factors (as the CPU kernel does)."""
        t = self.torch
        unique = t.unique(indices)
        new = unique[~self.seen[unique]]
        if len(new) == 0:
            return
        self.seen[new] = True
        if self.model.pairwise is not None:
            cfg = self.cfg
            init = initial_factors(new.cpu().numpy(), self.model.pairwise.embedding.weight.shape[1], seed=cfg.seed, std=cfg.init_std)
            with t.no_grad():
                self.model.pairwise.embedding.weight[new] = t.from_numpy(init).to(self.device)

    def prepare(self, note) -> None:
        pass

    def tensors(self, rows: Rows):
        t = self.torch
        return (
            t.from_numpy(rows.indices.astype(np.int64)).to(self.device),
            t.from_numpy(rows.offsets[:-1]).to(self.device),
            t.from_numpy(rows.values).to(self.device),
        )

    def train(self, rows: Rows, order: np.ndarray) -> float:
        t = self.torch
        total = 0.0
        for b0 in range(0, len(order), self.cfg.batch_size):
            batch = rows.take(order[b0 : b0 + self.cfg.batch_size])
            indices, offsets, values = self.tensors(batch)
            labels = t.from_numpy(batch.labels).to(self.device)
            self.init_new_rows(indices)
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.batch_rows = len(batch)
            loss = t.nn.functional.binary_cross_entropy_with_logits(self.model(indices, offsets, values), labels)
            objective = loss if self.inv_counts is None else loss + self.prior_penalty(indices, len(batch))
            objective.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(batch)
        return total

    def weights(self) -> FMWeights:
        return self.model.to_weights()

    def scoring_weights(self) -> FMWeights:
        return self.weights()

    def snapshot(self, previous: FMWeights | None = None) -> FMWeights:
        return self.weights()  # (to_weights copies the device's tensors)

    def weights_finite(self) -> bool:
        w = self.weights()
        return bool(np.isfinite(w.bias).all() and np.isfinite(w.linear).all() and np.isfinite(w.factors).all())

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def set_counts(self, counts: np.ndarray, rows: int, met: np.ndarray | None = None) -> None:
        self.inv_counts = self.torch.from_numpy((rows / np.maximum(counts, 1)).astype(np.float32)).to(self.device)

    def prior_penalty(self, indices, n_rows: int):
        """This batch's share of the --l2-all penalty: for each occurrence of feature
        i, l2_all / 2 * |theta_i|^2 * rows / count_i, over the batch's rows (the loss
        is a mean), so that an epoch applies l2_all / 2 * |theta_i|^2 to the mean loss."""
        embedding = self.torch.nn.functional.embedding  # sparse gradients, like the model's
        share = self.inv_counts[indices]
        penalty = 0.0
        if self.cfg.l2_all_linear and self.cfg.optimizer != "ftrl":
            w = embedding(indices, self.model.linear.weight.weight, sparse=True)[:, 0]
            penalty = penalty + self.cfg.l2_all_linear * (share * w * w).sum()
        if self.cfg.l2_all_factors and self.model.pairwise is not None:
            v = embedding(indices, self.model.pairwise.embedding.weight, sparse=True)
            penalty = penalty + self.cfg.l2_all_factors * (share * (v * v).sum(1)).sum()
        return 0.5 * penalty / n_rows

