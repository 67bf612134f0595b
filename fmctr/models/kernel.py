"""Fused CPU kernels (numba): FM logits and mini-batch training steps over CSR rows.

This is the CPU engine. It computes exactly what the torch engine (fmctr.models.torch_fm) does
- the same logits, the same mean-loss gradient per mini-batch, the same lazy L2 on
the rows a batch touches, the same Adagrad/Adam updates - but in one pass per row
with no autograd graph, which is where CPU speed comes from.
tests/test_fm.py::test_engines_train_to_the_same_weights holds the two engines to
the same weights.
"""

from __future__ import annotations

import glob
import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

def cached(name: str) -> bool:
    """Whether numba's cache holds a compiled `name` of this module (any signature)."""
    folder = os.path.join(os.path.dirname(__file__), "__pycache__")
    return bool(glob.glob(os.path.join(folder, f"kernel.{name}-*.nbi")))


ADAGRAD = 0
ADAM = 1
FTRL = 2  # FTRL-Proximal for the linear weights, Adagrad for the bias and the factors
# fastmath without assuming no inf/NaN. And every kernel uses error_model="numpy":
# Python's error model checks each float division for zero, which stops vectorization.
FAST = {"contract", "reassoc", "arcp", "nsz"}


def _prefetch_intrinsic(write: int):
    def typer(typingctx, array, row, column):
        if not isinstance(array, types.Array) or array.ndim > 2:
            return None

        def codegen(context, builder, signature, args):
            array_type, row_type, column_type = signature.args
            view = context.make_array(array_type)(context, builder, args[0])
            where = [context.cast(builder, args[1], row_type, types.intp)]
            if array_type.ndim == 2:
                where.append(context.cast(builder, args[2], column_type, types.intp))
            pointer = cgutils.get_item_pointer(context, builder, array_type, view, where, wraparound=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                "llvm.prefetch.p0i8")
            # read or write access, high temporal locality, data cache
            builder.call(fn, [builder.bitcast(pointer, i8p), i32(write), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(array, row, column), codegen

    typer.__name__ = typer.__qualname__ = "prefetch_write" if write else "prefetch_read"
    return typer


# Ask the CPU to start loading the cache line that holds array[row, column] (array[row]
# for a 1-D array); LLVM's prefetch, with no effect on results. Scoring reads its
# tables at random, so the next row's lines are requested while this row computes,
# instead of stalling when it reaches them. Training does not: a staged prefetch of the
# rows two ahead (their indices, then their table lines) ran its kernel at 0.93x on a
# quiet machine with a large last-level cache (bench/kernel_ab.py, 4 rounds), where the
# out-of-order core already overlaps a row's ~40 independent feature loads.
_prefetch_read = intrinsic(_prefetch_intrinsic(0))


@intrinsic
def _unowned(typingctx, array):
    """The same array (data, shape, strides) with no owner: numba counts references to
    an owned array with atomic increments and decrements each time one is passed to a
    function, and on x86 each of those is a full memory fence - dozens per row - and,
    for the arrays the threads share, a cache line that moves between the cores. An
    unowned view's count is null, so passing it costs a null check. The kernels take
    views of their arguments, which their caller keeps alive."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        source = context.make_array(array)(context, builder, args[0])
        view = context.make_array(array)(context, builder)
        populate_array(view, data=source.data, shape=source.shape, strides=source.strides,
                       itemsize=source.itemsize, meminfo=None)
        return view._getvalue()

    return array(array), codegen


@intrinsic
def _or_byte(typingctx, array, index, value):
    """array[index] |= value as one atomic instruction: Hogwild threads set bits of
    the same byte, and a plain read-modify-write could lose one."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.dtype == types.uint8):
        return None

    def codegen(context, builder, signature, args):
        array_type, index_type, value_type = signature.args
        view = context.make_array(array_type)(context, builder, args[0])
        where = context.cast(builder, args[1], index_type, types.intp)
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [where], wraparound=False)
        builder.atomic_rmw("or", pointer, context.cast(builder, args[2], value_type, types.uint8), "monotonic")
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _first_meeting(seen, i):
    """Whether feature i is met for the first time, marking it met. `seen` is a bitmap
    (bit i & 7 of byte i >> 3; fmctr.models.weights.pack_seen): at 2^22 features it is
    512 KiB, which stays in a core's L2 cache, where a byte per feature (4 MiB) missed
    it once per feature read (the epoch 1.08x faster without the check at all)."""
    byte, bit = i >> 3, np.uint8(1 << (i & 7))
    if seen[byte] & bit:
        return False
    _or_byte(seen, byte, bit)
    return True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _row_logit(indices, values, lo, hi, bias, linear, factors, s):
    """Logit of one row; leaves sum_i v_if x_i in s for the gradient."""
    return _row_logit_k(indices, values, lo, hi, bias, linear, factors, factors.shape[1], s)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefetch_row(indices, offsets, r, linear, factors):
    """Start loading row r's lines of the tables, for scoring (read only)."""
    for p in range(offsets[r], offsets[r + 1]):
        i = indices[p]
        _prefetch_read(linear, i, 0)
        for f in range(0, factors.shape[1], 16):
            _prefetch_read(factors, i, f)


@numba.njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def fm_logits(indices, values, offsets, bias, linear, factors, out):
    """(nnz,), (nnz,), (n+1,) CSR rows -> out (n,) logits."""
    n = len(offsets) - 1
    k = factors.shape[1]
    for b in numba.prange((n + 1023) // 1024):
        s = np.empty(k, np.float64)
        end = min(n, b * 1024 + 1024)
        for r in range(b * 1024, end):
            if r + 1 < end:
                _prefetch_row(indices, offsets, r + 1, linear, factors)
            out[r] = _row_logit(indices, values, offsets[r], offsets[r + 1], bias[0], linear, factors, s)


@numba.njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def fm_scores(indices, values, offsets, bias, linear, factors, out):
    """(nnz,), (nnz,), (n+1,) CSR rows -> out (n,) logits in float64, in the order of
    operations of fmctr.models.scores.small_logits (no fast-math: the same bits)."""
    n = len(offsets) - 1
    k = factors.shape[1]
    for b in numba.prange((n + 1023) // 1024):
        s = np.empty(k, np.float64)
        q = np.empty(k, np.float64)
        end = min(n, b * 1024 + 1024)
        for r in range(b * 1024, end):
            if r + 1 < end:
                _prefetch_row(indices, offsets, r + 1, linear, factors)
            s[:] = 0.0
            q[:] = 0.0
            lin = np.float64(bias[0])
            for p in range(offsets[r], offsets[r + 1]):
                i = indices[p]
                x = np.float64(values[p])
                lin += np.float64(linear[i]) * x
                for f in range(k):
                    vx = np.float64(factors[i, f]) * x
                    s[f] += vx
                    q[f] += vx * vx
            d = 0.0
            for f in range(k):
                d += s[f] * s[f] - q[f]
            out[r] = lin + 0.5 * d


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _step(theta, g, acc1, acc2, optimizer, lr, eps, beta1, beta2, correction1, correction2, acc0):
    """One optimizer update of one scalar: (new value, new state1, new state2).
    Adagrad's accumulator holds the sum of squared gradients, to which its initial
    value acc0 is added when used (so the state starts as untouched zero pages); it
    returns the accumulator twice, so its two state arrays may be the same array."""
    if optimizer != ADAM:
        a = acc1 + g * g
        return theta - lr * g / (math.sqrt(a + acc0) + eps), a, a
    m = beta1 * acc1 + (1.0 - beta1) * g
    v = beta2 * acc2 + (1.0 - beta2) * g * g
    return theta - lr * (m / correction1) / (math.sqrt(v / correction2) + eps), m, v


# The updates index the tables instead of slicing them: a slice is a new array whose
# reference count is changed atomically, and with several threads that count's cache
# line moved between the cores at every update.
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _adagrad_one(theta, acc, i, grad, l2, lr, eps, acc0):
    """One Adagrad step of theta[i] (a linear weight; float32 throughout)."""
    g = grad + l2 * theta[i]
    a = acc[i] + g * g
    acc[i] = a
    theta[i] -= lr * g / (np.sqrt(a + acc0) + eps)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _adagrad_factors(table, i, k, grad, slot, l2, lr, eps, acc0):
    """One Adagrad step of row i's factors (table[i, :k]; their accumulator in
    table[i, k:]) by gradient row `slot` of grad (float32 throughout, so the loop
    vectorizes)."""
    for f in range(k):
        g = grad[slot, f] + l2 * table[i, f]
        a = table[i, k + f] + g * g
        table[i, k + f] = a
        table[i, f] -= lr * g / (np.sqrt(a + acc0) + eps)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _ftrl_one(w, z, n, i, g, alpha, beta, l1, l2):
    """FTRL-Proximal (McMahan et al. 2013) for one linear weight with gradient g: z and
    n are its summed adjusted gradients and squared gradients; the weight is the
    closed-form minimiser, so L1 makes it exactly 0 and L2 acts as a prior whose
    strength does not grow with the number of times the feature is seen."""
    n_old = n[i]
    n_new = n_old + g * g
    sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / alpha
    zi = z[i] + g - sigma * w[i]
    z[i] = zi
    n[i] = n_new
    if abs(zi) <= l1:
        w[i] = 0
    else:
        w[i] = -(zi - np.sign(zi) * l1) / ((beta + np.sqrt(n_new)) / alpha + l2)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _adam_one(theta, m_state, v_state, i, grad, l2, lr, eps, beta1, beta2, c1, c2):
    """One Adam step of theta[i] (a linear weight)."""
    one = np.float32(1)
    g = grad + l2 * theta[i]
    m = beta1 * m_state[i] + (one - beta1) * g
    v = beta2 * v_state[i] + (one - beta2) * g * g
    m_state[i] = m
    v_state[i] = v
    theta[i] -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _adam_factors(table, v_state, i, k, grad, slot, l2, lr, eps, beta1, beta2, c1, c2):
    """One Adam step of row i's factors (table[i, :k]; m in table[i, k:], v in v_state[i])."""
    one = np.float32(1)
    for f in range(k):
        g = grad[slot, f] + l2 * table[i, f]
        m = beta1 * table[i, k + f] + (one - beta1) * g
        v = beta2 * v_state[i, f] + (one - beta2) * g * g
        table[i, k + f] = m
        v_state[i, f] = v
        table[i, f] -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _init_row_k(table, i, k, seed, std):
    """fmctr.models.weights.initial_factors for row i, in place, in the first k columns
    of the training table (factors, then their optimizer state)."""
    base = _splitmix64(_splitmix64(np.uint64(seed)) + np.uint64(i))
    half_width = math.sqrt(3.0) * std
    for f in range(k):
        u = np.float64(_splitmix64(base + np.uint64(f)) >> np.uint64(11)) * 2.0**-53
        table[i, f] = (2.0 * u - 1.0) * half_width


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _value(values, p):
    """values[p], or 1 where the training kernels are given no values: one-hot rows
    (fmctr.hashing.tokens.ones), whose multiplications by 1 cost the kernel 4%."""
    return values[p] if len(values) else np.float32(1.0)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _row_logit_k(indices, values, lo, hi, bias, linear, factors, k, s):
    """_row_logit with the factors in the first k columns of a wider table (the
    training table: factors then their Adagrad/Adam-m state, side by side in a row)."""
    for f in range(k):
        s[f] = 0
    lin = bias
    square_then_sum = np.float32(0)
    for p in range(lo, hi):
        i = indices[p]
        x = _value(values, p)
        lin += linear[i] * x
        for f in range(k):
            vx = factors[i, f] * x
            s[f] += vx
            square_then_sum += vx * vx
    sum_then_square = np.float32(0)
    for f in range(k):
        sum_then_square += s[f] * s[f]
    return np.float64(lin + np.float32(0.5) * (sum_then_square - square_then_sum))


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _entry(i, table_keys, mask):
    """Feature i's entry in the batch's small open-addressing table (or the free
    entry where it goes)."""
    h = (np.int64(i) * 2654435761) & mask
    while table_keys[h] != i and table_keys[h] != -1:
        h = (h + 1) & mask
    return h


TAGS = 63  # batches a thread's marks tell apart (_mark_features) before they are cleared


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _mark_features(indices, lo, hi, marks, tag):
    """Count the features indices[lo:hi] in the batch's marks: one byte per low bits of
    an index, the batch's tag (1 to TAGS) in its upper six bits and a count of 1 or 2
    (or more) in its lower two. A feature whose mark is tag << 2 | 1 occurs once in
    the batch: no other feature shares its mark. One with a count of 2 may occur again
    (or share the low bits of another): it goes through the batch's slots (_slot_of),
    exact either way. A byte left by an earlier batch is counted afresh, so the marks
    are not cleared after each batch, only when the tags start over (_new_tag): a
    pass over the batch's indices to clear them cost the kernel about 5%."""
    m = len(marks) - 1
    top = np.uint8(tag << 2)
    for p in range(lo, hi):
        h = indices[p] & m
        mark = marks[h]
        marks[h] = top | np.uint8(min((mark & 3) + 1, 2)) if mark & 0xFC == top else top | np.uint8(1)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _new_tag(number, marks):
    """The marks' tag for a thread's batch `number` (0, 1, ...), clearing the marks
    when the tags start over."""
    tag = number % TAGS + 1
    if tag == 1:
        marks[:] = 0
    return tag


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _slot_of(i, slots, n_slots, k):
    """The gradient slot of feature i in the batch's open-addressing table, made (zero)
    at its first use; returns (slot, number of slots)."""
    table_keys, table_slots, slot_pos, slot_rows, slot_linear, slot_factors = slots[:6]
    h = _entry(i, table_keys, len(table_keys) - 1)
    if table_keys[h] == i:
        return table_slots[h], n_slots
    table_keys[h] = i
    table_slots[h] = n_slots
    slot_pos[n_slots] = h
    slot_rows[n_slots] = i
    slot_linear[n_slots] = 0.0
    for f in range(k):
        slot_factors[n_slots, f] = 0.0
    return n_slots, n_slots + 1


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _accumulate(indices, values, lo, hi, g, s, linear, table, k, l2, opt, states, slots, n_slots, once):
    """Add one row's gradient (g = dloss/dlogit, s = sum_i v_i x_i) to its features,
    with their --l2-all share; returns the number of slots. `once` is the mark of a
    feature the batch holds once (_mark_features).

    With Adagrad (the default), a feature the batch meets only here (most of them:
    _mark_features counted) takes its step at once: its gradient is complete and no
    other row of the batch reads it, so the step is the one it would take after the
    batch, to the bit (the golden digests and more cases checked; an
    llvm.arithmetic.fence around each gradient, against fast-math fusing it into the
    step, kept the same bits; without it the kernel ran 1.10x as fast, 2 threads).
    The others gather in slots, stepped after the batch (_after_batch). Every feature
    through a slot ran the kernel at 0.7x (1M rows, 1 thread); with the other
    optimizers' steps written out here too, 0.85x - they keep the slots (and, Adam's
    division being fast-math, their exact bits).

    priors (--l2-all, l2 = (on, inv_counts, 1 / batch, linear's, the factors')): with
    inv_counts = rows / the feature's count in the rows, each occurrence carries rows/count
    of it, so over an epoch every feature gets the same L2 - an unbiased sparse form of
    weight decay on the mean loss, under which rare features are shrunk hardest."""
    prior, inv_counts, inv_batch, prior_lin32, prior_fac32 = l2
    optimizer, lr32, eps32, acc0_32, touch_lin32, touch_fac32 = opt[0], opt[2], opt[3], opt[4], opt[9], opt[10]
    slot_linear, slot_factors, alone, marks = slots[4], slots[5], slots[6], slots[7]
    m = len(marks) - 1
    for p in range(lo, hi):
        i = indices[p]
        x = _value(values, p)
        gx = g * x
        if optimizer == ADAGRAD and marks[i & m] == once:
            grad_linear = gx
            if prior:
                share = np.float32(inv_counts[i] * inv_batch)
                grad_linear = gx + share * prior_lin32 * linear[i]
                rf = share * prior_fac32
                for f in range(k):
                    alone[0, f] = gx * (s[f] - table[i, f] * x) + rf * table[i, f]
            else:
                for f in range(k):
                    alone[0, f] = gx * (s[f] - table[i, f] * x)
            _adagrad_one(linear, states[0], i, grad_linear, touch_lin32, lr32, eps32, acc0_32)
            _adagrad_factors(table, i, k, alone, 0, touch_fac32, lr32, eps32, acc0_32)
            continue
        slot, n_slots = _slot_of(i, slots, n_slots, k)
        if prior:
            share = np.float32(inv_counts[i] * inv_batch)
            slot_linear[slot] += gx + share * prior_lin32 * linear[i]
            rf = share * prior_fac32
            for f in range(k):
                slot_factors[slot, f] += gx * (s[f] - table[i, f] * x) + rf * table[i, f]
        else:
            slot_linear[slot] += gx
            for f in range(k):
                slot_factors[slot, f] += gx * (s[f] - table[i, f] * x)
    return n_slots


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _after_batch(n_slots, linear, table, k, opt, states, slots):
    """One optimizer step of every feature that gathered in a slot, from its batch's
    summed gradient; then the batch's table cleared. opt = (optimizer, rows in the
    batch, lr, eps, acc0, beta1, beta2, Adam's two bias corrections, the touch L2 of
    the linear weights and of the factors), float32 throughout: float64 constants would
    turn every vector operation into scalar double arithmetic. The "touch" L2 is added
    in the step, once per batch to each row the batch touches, so a feature is
    regularised as often as it is seen. states = (linear_state1, linear_state2,
    factor_state2, ftrl). The optimizers in separate plain loops, so the loop over f
    vectorizes."""
    optimizer, rows, lr32, eps32, acc0_32, beta1_32, beta2_32, c1, c2, touch_lin32, touch_fac32 = opt
    linear_state1, linear_state2, factor_state2, ftrl = states
    slot_rows, slot_linear, slot_factors = slots[3], slots[4], slots[5]
    if optimizer == FTRL:
        # FTRL's hyper-parameters are in the classic per-example units: the batch's
        # summed gradient, not its mean.
        for slot in range(n_slots):
            i = slot_rows[slot]
            _ftrl_one(linear, linear_state1, linear_state2, i, slot_linear[slot] * rows,
                      np.float32(ftrl[0]), np.float32(ftrl[1]), np.float32(ftrl[2]), np.float32(ftrl[3]))
            _adagrad_factors(table, i, k, slot_factors, slot, touch_fac32, lr32, eps32, acc0_32)
    elif optimizer == ADAGRAD:
        for slot in range(n_slots):
            i = slot_rows[slot]
            _adagrad_one(linear, linear_state1, i, slot_linear[slot], touch_lin32, lr32, eps32, acc0_32)
            _adagrad_factors(table, i, k, slot_factors, slot, touch_fac32, lr32, eps32, acc0_32)
    else:
        for slot in range(n_slots):
            i = slot_rows[slot]
            _adam_one(linear, linear_state1, linear_state2, i, slot_linear[slot], touch_lin32, lr32, eps32, beta1_32,
                      beta2_32, c1, c2)
            _adam_factors(table, factor_state2, i, k, slot_factors, slot, touch_fac32, lr32, eps32, beta1_32,
                          beta2_32, c1, c2)
    table_keys, slot_pos = slots[0], slots[2]
    for slot in range(n_slots):
        table_keys[slot_pos[slot]] = -1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _batch_options(optimizer, rows, lr, eps, acc0, beta1, beta2, step, l2_linear, l2_factors, inv_counts, priors):
    """(opt, l2) of _after_batch and _accumulate for a batch of `rows` rows at optimizer
    step `step`. FTRL's L2 is its own (ftrl[3]): no touch or prior L2 on its weights."""
    ftrl_linear = optimizer == FTRL
    # (Adam's bias corrections: two float64 powers a batch, about 2% of the kernel, for
    # the other optimizers unused)
    c1, c2 = (1.0 - beta1**step, 1.0 - beta2**step) if optimizer == ADAM else (1.0, 1.0)
    opt = (optimizer, np.float32(rows), np.float32(lr), np.float32(eps), np.float32(acc0), np.float32(beta1),
           np.float32(beta2), np.float32(c1), np.float32(c2),
           np.float32(0) if ftrl_linear else np.float32(l2_linear), np.float32(l2_factors))
    l2 = (priors[2] != 0.0, inv_counts, 1.0 / rows, np.float32(0) if ftrl_linear else np.float32(priors[0]),
          np.float32(priors[1]))
    return opt, l2


# Inlined into its thread's loop (_thread_rows, which takes the same fast-math flags, so
# the same bits): a call per batch of 4 rows passed some 30 arrays and tuples, and the
# kernel ran at 0.93x (bench/kernel_ab.py, 1M rows, 2 threads, 4 rounds).
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _train_batch(
    indices, values, offsets, labels, order, b0, b1, tag,
    bias, linear, table, k, bias_state, states, slots, s, seen,
    optimizer, lr, l2_linear, l2_factors, eps, beta1, beta2, step, init_seed, init_std, acc0, inv_counts, priors,
):
    """One mini-batch: the gradient of the mean logloss over rows order[b0:b1] at the
    current weights, plus L2 on the rows it touches, then one optimizer step on those
    rows (each feature's as soon as the batch's gradient of it is complete, see
    _accumulate; `tag`: the batch's marks, _mark_features). Returns the batch's summed
    logloss."""
    opt, l2 = _batch_options(optimizer, b1 - b0, lr, eps, acc0, beta1, beta2, step, l2_linear, l2_factors,
                             inv_counts, priors)
    inv_batch = l2[2]
    for j in range(b0, b1):
        _mark_features(indices, offsets[order[j]], offsets[order[j] + 1], slots[7], tag)
    once = np.uint8(tag << 2 | 1)
    n_slots = 0
    grad_bias = 0.0
    total_loss = 0.0
    for j in range(b0, b1):
        r = order[j]
        lo = offsets[r]
        hi = offsets[r + 1]
        if len(seen):  # (empty: every feature of the rows was met before, meet_rows)
            for p in range(lo, hi):
                i = indices[p]
                if _first_meeting(seen, i):
                    _init_row_k(table, i, k, init_seed, init_std)
        z = _row_logit_k(indices, values, lo, hi, bias[0], linear, table, k, s)
        y = labels[r]
        total_loss += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
        g64 = (1.0 / (1.0 + math.exp(-z)) - y) * inv_batch
        grad_bias += g64
        n_slots = _accumulate(indices, values, lo, hi, np.float32(g64), s, linear, table, k, l2, opt, states, slots,
                              n_slots, once)
    bias[0], bias_state[0], bias_state[1] = _step(  # (opt[7], opt[8]: Adam's bias corrections)
        bias[0], grad_bias, bias_state[0], bias_state[1], optimizer, lr, eps, beta1, beta2, opt[7], opt[8], acc0
    )
    _after_batch(n_slots, linear, table, k, opt, states, slots)
    return total_loss


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _batch_scratch(table_size, slots, k):
    """A thread's scratch for its batches (owned: keep it alive while its views are used):
    the open-addressing table (keys, slot), the entries used, and each slot's feature and
    gradients; then the factors' gradient of a feature met once, and the marks
    (_mark_features: at least 8 KiB, 4 bytes per occurrence a batch can hold)."""
    marks = 1 << 13
    while marks < 4 * slots:
        marks *= 2
    return (np.full(table_size, -1, np.int64), np.empty(table_size, np.int64), np.empty(slots, np.int64),
            np.empty(slots, np.int64), np.empty(slots, np.float32), np.empty((slots, k), np.float32),
            np.empty((1, k), np.float32), np.zeros(marks, np.uint8))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _unowned_scratch(scratch):
    return (_unowned(scratch[0]), _unowned(scratch[1]), _unowned(scratch[2]), _unowned(scratch[3]),
            _unowned(scratch[4]), _unowned(scratch[5]), _unowned(scratch[6]), _unowned(scratch[7]))


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _thread_rows(
    t, indices, values, offsets, labels, order, batch_size, threads, n_batches, max_row, table_size,
    bias, linear, table, k,
    bias_state, linear_state1, linear_state2, factor_state2, seen,
    optimizer, lr, l2_linear, l2_factors, eps, beta1, beta2, step0, init_seed, init_std, acc0, ftrl, inv_counts, priors,
):
    """Thread t's share of train_rows: batches t, t + threads, ...; returns their summed
    logloss. It works on unowned views of the arrays (see _unowned)."""
    n = len(order)
    indices, values, offsets, labels, order = (_unowned(indices), _unowned(values), _unowned(offsets),
                                               _unowned(labels), _unowned(order))
    bias, linear, table, bias_state, seen = _unowned(bias), _unowned(linear), _unowned(table), _unowned(bias_state), _unowned(seen)
    states = (_unowned(linear_state1), _unowned(linear_state2), _unowned(factor_state2), _unowned(ftrl))
    inv_counts, priors = _unowned(inv_counts), _unowned(priors)
    # (owned, and used in the loop, so alive until it ends; each batch gets views)
    scratch = _batch_scratch(table_size, batch_size * max_row + 1, k)
    s = np.empty(k, np.float32)
    loss = 0.0
    for b in range(t, n_batches, threads):
        b0 = b * batch_size
        tag = _new_tag(b // threads, scratch[7])
        loss += _train_batch(
            indices, values, offsets, labels, order, b0, min(b0 + batch_size, n), tag,
            bias, linear, table, k, bias_state, states, _unowned_scratch(scratch), _unowned(s), seen,
            optimizer, lr, l2_linear, l2_factors, eps, beta1, beta2, step0 + b + 1,
            init_seed, init_std, acc0, inv_counts, priors,
        )
    return loss


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def train_rows(
    indices, values, offsets, labels, order, batch_size, threads,
    bias, linear, table, k,
    bias_state, linear_state1, linear_state2, factor_state2,
    seen, max_row,
    optimizer, lr, l2_linear, l2_factors, eps, beta1, beta2, counters, init_seed, init_std, acc0, ftrl, inv_counts, priors,
):
    """Train on the rows `order` (indices into the CSR arrays), batch by batch.
    With one thread the batches run in order: deterministic, and the same updates as
    the torch engine. With more, thread t takes batches t, t+threads, ... and all
    update the shared weights without locks (Hogwild): sparse rows rarely collide.
    A row met for the first time gets its initial factors. counters[0] counts
    optimizer steps (batches). Returns the summed logloss
    of the rows, each taken before its batch's update. `table` (n, 2k) holds each
    feature's k factors in columns [0, k) and their first optimizer state (Adagrad's
    accumulator, Adam's m) in [k, 2k); Adam's second state is factor_state2.
    priors = (--l2-all's linear L2, its factors' L2, on: inv_counts is set)."""
    n = len(order)
    n_batches = (n + batch_size - 1) // batch_size
    losses = np.zeros(threads, np.float64)
    table_size = 1
    while table_size < 2 * (batch_size * max_row + 1):
        table_size *= 2
    for t in numba.prange(threads):
        losses[t] = _thread_rows(
            t, indices, values, offsets, labels, order, batch_size, threads, n_batches, max_row, table_size,
            bias, linear, table, k,
            bias_state, linear_state1, linear_state2, factor_state2, seen,
            optimizer, lr, l2_linear, l2_factors, eps, beta1, beta2, counters[0], init_seed, init_std, acc0, ftrl,
            inv_counts, priors,
        )
    counters[0] += n_batches
    return losses.sum()


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def meet_rows(rows, seen, table, k, init_seed, init_std):
    """Give each of `rows` (feature indices) never met before its initial factors
    (_init_row_k), marking it met in `seen`. Two threads that meet the same new row
    at once both write its initial factors: the same values."""
    for j in numba.prange(len(rows)):
        i = rows[j]
        if _first_meeting(seen, i):
            _init_row_k(table, i, k, init_seed, init_std)


GATHER_AHEAD = 16  # rows


@numba.njit(cache=True, nogil=True, error_model="numpy")
def gather_offsets(offsets, labels, order, out_offsets, out_labels):
    """The first half of gathering the rows `order` of a CSR block in that order: their
    offsets and labels (out_offsets[-1] is then the count of indices to copy). Asks
    for the lines of the row GATHER_AHEAD places ahead: a shuffled row is a miss."""
    n = len(order)
    out_offsets[0] = 0
    for j in range(n):
        if j + GATHER_AHEAD < n:
            _prefetch_read(offsets, order[j + GATHER_AHEAD], 0)
            _prefetch_read(labels, order[j + GATHER_AHEAD], 0)
        r = order[j]
        out_offsets[j + 1] = out_offsets[j] + (offsets[r + 1] - offsets[r])
        out_labels[j] = labels[r]


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def gather_indices(indices, values, offsets, order, out_offsets, out_indices, out_values):
    """The second half: the rows' indices (and values, if out_values is not empty) into
    the places gather_offsets gave them. Training then reads its rows one after
    another: a shuffled row is a cache miss on each of its arrays, and a copy loop
    that does nothing else has many of those in flight at once, where the training
    loop waits on each. With the lines asked for ahead in both halves, 1M shuffled
    rows gather in 0.17 s instead of 0.29."""
    n = len(order)
    copy_values = len(out_values) > 0
    for j in numba.prange(n):
        if j + GATHER_AHEAD // 2 < n:
            q = offsets[order[j + GATHER_AHEAD // 2]]
            for line in range(q, min(q + 48, len(indices)), 16):  # 3 lines of int32
                _prefetch_read(indices, line, 0)
        r = order[j]
        lo = offsets[r]
        d = out_offsets[j]
        for p in range(offsets[r + 1] - lo):
            out_indices[d + p] = indices[lo + p]
        if copy_values:
            for p in range(offsets[r + 1] - lo):
                out_values[d + p] = values[lo + p]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _pair_logits(indices, values, offsets, r, bias, linear, table, k, seen, init_seed, init_std, s_pos, s_neg):
    """score(row r) and score(row r + 1), meeting their new features first; leaves
    each row's sum_i v_i x_i in s_pos and s_neg."""
    for p in range(offsets[r], offsets[r + 2]):
        i = indices[p]
        if _first_meeting(seen, i):
            _init_row_k(table, i, k, init_seed, init_std)
    z_pos = _row_logit_k(indices, values, offsets[r], offsets[r + 1], bias, linear, table, k, s_pos)
    z_neg = _row_logit_k(indices, values, offsets[r + 1], offsets[r + 2], bias, linear, table, k, s_neg)
    return z_pos, z_neg


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _train_pair_batch(indices, values, offsets, b0, b1, tag, bias, linear, table, k, states, slots, s_pos, s_neg, seen,
                      optimizer, lr, l2_linear, l2_factors, eps, step, init_seed, init_std, acc0, inv_counts, priors):
    """One mini-batch of BPR pairs (rows 2j, 2j + 1 for j in [b0, b1)): the gradient of
    the mean of -log sigmoid(score(pos) - score(neg)) and one optimizer step, as
    _train_batch does for logloss. The pair's rows are two ordinary rows whose
    dloss/dlogit are g and -g, so shared features (the user's) get the difference;
    the bias cancels. Returns the batch's summed loss."""
    opt, l2 = _batch_options(optimizer, b1 - b0, lr, eps, acc0, 0.9, 0.999, step, l2_linear, l2_factors,
                             inv_counts, priors)
    _mark_features(indices, offsets[2 * b0], offsets[2 * b1], slots[7], tag)
    once = np.uint8(tag << 2 | 1)
    n_slots = 0
    total_loss = 0.0
    for j in range(b0, b1):
        r = 2 * j
        z_pos, z_neg = _pair_logits(indices, values, offsets, r, bias[0], linear, table, k, seen, init_seed,
                                    init_std, s_pos, s_neg)
        d = z_pos - z_neg
        total_loss += max(-d, 0.0) + math.log1p(math.exp(-abs(d)))
        g = np.float32(-l2[2] / (1.0 + math.exp(d)))  # d/dd of -log sigmoid(d), over the batch
        for row, gr, s in ((r, g, s_pos), (r + 1, -g, s_neg)):
            n_slots = _accumulate(indices, values, offsets[row], offsets[row + 1], gr, s, linear, table, k, l2, opt,
                                  states, slots, n_slots, once)
    _after_batch(n_slots, linear, table, k, opt, states, slots)
    return total_loss


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def train_pairs(indices, values, offsets, batch_size, threads, bias, linear, table, k, linear_state1, linear_state2,
                factor_state2, seen, max_row, optimizer, lr, l2_linear, l2_factors, eps, counters, init_seed, init_std,
                acc0, ftrl, inv_counts, priors):
    """Train on BPR pairs: rows 2j (the positive) and 2j + 1 (a negative), in order,
    batch_size pairs a batch; threads share batches Hogwild-style as in train_rows.
    Returns the summed pairwise loss."""
    n = (len(offsets) - 1) // 2
    n_batches = (n + batch_size - 1) // batch_size
    losses = np.zeros(threads, np.float64)
    slots = 2 * batch_size * max_row + 1
    table_size = 1
    while table_size < 2 * slots:
        table_size *= 2
    for t in numba.prange(threads):
        scratch = _batch_scratch(table_size, slots, k)
        s_pos = np.empty(k, np.float32)
        s_neg = np.empty(k, np.float32)
        states = (linear_state1, linear_state2, factor_state2, ftrl)
        for b in range(t, n_batches, threads):
            b0 = b * batch_size
            losses[t] += _train_pair_batch(
                indices, values, offsets, b0, min(b0 + batch_size, n), _new_tag(b // threads, scratch[7]), bias,
                linear, table, k, states, scratch, s_pos, s_neg, seen, optimizer, lr, l2_linear, l2_factors, eps,
                counters[0] + b + 1, init_seed, init_std, acc0, inv_counts, priors)
    counters[0] += n_batches
    return losses.sum()


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def adagrad_rows(features, grad_linear, grad_factors, linear, linear_state, table, k, l2_linear, l2_factors, lr, eps,
                 acc0):
    """One Adagrad step, with the touch L2, of each of `features` (distinct) by its row of
    the gradients, as _after_batch does for a batch's slots (the full-catalogue softmax,
    fmctr.models.softmax, computes its gradients outside a kernel)."""
    lr32, eps32, acc0_32 = np.float32(lr), np.float32(eps), np.float32(acc0)
    l2_lin32, l2_fac32 = np.float32(l2_linear), np.float32(l2_factors)
    for slot in range(len(features)):
        i = features[slot]
        _adagrad_one(linear, linear_state, i, grad_linear[slot], l2_lin32, lr32, eps32, acc0_32)
        _adagrad_factors(table, i, k, grad_factors, slot, l2_fac32, lr32, eps32, acc0_32)
