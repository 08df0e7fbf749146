"""ONNX nodes for each JAX primitive the ONNX export supports (`HANDLERS`, used by onnx_export).

A handler is `handler(graph, eqn, *args) -> value` (a list of values for primitives with
several results), where a value is an ONNX tensor name or a numpy constant and `graph` is the
`onnx_export.Graph` being built (`graph.node`, `graph.shape`, `graph.dim`). The shapes are the
equation's: `eqn.invars[i].aval.shape`, with symbolic sizes for the batch.

Layouts: convolutions and pools move the data to ONNX's [N, C, spatial...] (and kernels to
[O, I, spatial...]) with a Transpose and back; kernels are constants, transposed in numpy.
dot_general is a MatMul ([..., K] x [K, N]) or else an Einsum. XLA's gather and dynamic_slice
clamp their start indices into the operand: so do the translations.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from occreid_jax.errors import UserError

INT64_MAX = np.iinfo(np.int64).max


def is_static(size) -> bool:
    """Whether a dimension size is a plain integer (not a symbolic expression of the batch)."""
    return isinstance(size, int | np.integer)


def same_dim(a, b) -> bool:
    """Whether two dimension sizes are the same number or the same symbolic expression."""
    return str(a) == str(b)


def unsupported(eqn, detail: str = "") -> UserError:
    """The error for a JAX primitive (or one of its settings) the ONNX export cannot translate."""
    what = f" ({detail})" if detail else ""
    return UserError(
        f"the ONNX export does not support the JAX primitive '{eqn.primitive.name}'{what}; "
        "use --format=jax_export or --format=savedmodel"
    )


def _onnx_dtype(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _ints(values) -> np.ndarray:
    return np.array([int(v) for v in values], np.int64)


def _shape(eqn, i: int = 0) -> tuple:
    return eqn.invars[i].aval.shape


def _dtype(eqn, i: int = 0) -> np.dtype:
    return np.dtype(eqn.invars[i].aval.dtype)


def _transpose(graph, x, perm):
    """x with its axes permuted (numpy for a constant, nothing for the identity)."""
    perm = [int(p) for p in perm]
    if perm == sorted(perm):
        return x
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.transpose(x, perm))
    return graph.node("Transpose", [x], perm=perm)


def _inverse(perm) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return inverse


# Element-wise ----------------------------------------------------------------------------------


def _unary(op: str):
    return lambda graph, eqn, x: graph.node(op, [x])


def _binary(op: str):
    return lambda graph, eqn, x, y: graph.node(op, [x, y])


def _logical(logical: str, bitwise: str):
    """Boolean And / Or / Xor / Not, or the bitwise op on integers."""

    def handler(graph, eqn, *args):
        return graph.node(logical if _dtype(eqn) == np.bool_ else bitwise, list(args))

    return handler


def _identity(graph, eqn, *args):
    return args if eqn.primitive.multiple_results else args[0]


def _integer_pow(graph, eqn, x):
    """x ** y by repeated squaring, as XLA expands it (1 / x ** -y for y < 0)."""
    y = eqn.params["y"]
    result, base, n = None, x, abs(y)
    while n:
        if n & 1:
            result = base if result is None else graph.node("Mul", [result, base])
        n >>= 1
        if n:
            base = graph.node("Mul", [base, base])
    if result is None:
        return graph.node("Expand", [np.ones((), _dtype(eqn)), graph.node("Shape", [x])])
    return graph.node("Reciprocal", [result]) if y < 0 else result


def _convert(graph, eqn, x):
    new_dtype = np.dtype(eqn.params["new_dtype"])
    if new_dtype == _dtype(eqn):
        return x
    return graph.node("Cast", [x], to=_onnx_dtype(new_dtype))


def _select_n(graph, eqn, which, *cases):
    """cases[which]: Where on a boolean, a chain of Where(which == i) on an integer."""
    if _dtype(eqn) == np.bool_:
        return cases[0] if len(cases) == 1 else graph.node("Where", [which, cases[1], cases[0]])
    out = cases[0]
    for i, case in enumerate(cases[1:], 1):
        equal = graph.node("Equal", [which, np.array(i, _dtype(eqn))])
        out = graph.node("Where", [equal, case, out])
    return out


# Reductions ------------------------------------------------------------------------------------


def _reduce(op: str):
    def handler(graph, eqn, x):
        axes = eqn.params["axes"]
        return graph.node(op, [x, _ints(axes)], keepdims=0) if axes else x

    return handler


def _arg_reduce(op: str):
    def handler(graph, eqn, x):
        (axis,) = eqn.params["axes"]
        index = graph.node(op, [x], axis=int(axis), keepdims=0, select_last_index=0)
        return graph.node("Cast", [index], to=_onnx_dtype(eqn.params["index_dtype"]))

    return handler


def _pool(graph, eqn, x, onnx_op: str, **attrs):
    """A reduce_window as the ONNX pool `onnx_op` over the window's dimensions, the other two
    (batch, channels) leading; a transpose there and back."""
    p = eqn.params
    window, strides, dilation = p["window_dimensions"], p["window_strides"], p["window_dilation"]
    pads = [tuple(pad) for pad in p["padding"]]
    if any(d != 1 for d in p["base_dilation"]) or min(min(pad) for pad in pads) < 0:
        raise unsupported(eqn, "base dilation or negative padding")
    rank = len(window)
    trivial = [
        (window[i], strides[i], pads[i], dilation[i]) == (1, 1, (0, 0), 1) for i in range(rank)
    ]
    pooled = [i for i in range(rank) if not trivial[i]]
    kept = [i for i in range(rank) if trivial[i]]
    if not pooled:
        return x
    if len(kept) != 2:
        raise unsupported(eqn, f"a window over {len(pooled)} of {rank} dimensions")
    if onnx_op == "MaxPool":
        attrs["dilations"] = [int(dilation[i]) for i in pooled]
    elif any(dilation[i] != 1 for i in pooled):
        raise unsupported(eqn, "window dilation")
    perm = kept + pooled
    y = graph.node(
        onnx_op,
        [_transpose(graph, x, perm)],
        kernel_shape=[int(window[i]) for i in pooled],
        strides=[int(strides[i]) for i in pooled],
        pads=[int(pads[i][0]) for i in pooled] + [int(pads[i][1]) for i in pooled],
        **attrs,
    )
    return _transpose(graph, y, _inverse(perm))


def _max_pool(graph, eqn, x):
    """reduce_window_max (flax's max_pool, padded with -inf): MaxPool. Other reduce_window
    kinds than max and sum (min, a custom reduction) have no handler: the export names them."""
    return _pool(graph, eqn, x, "MaxPool")


def _sum_pool(graph, eqn, x):
    """reduce_window_sum (flax's avg_pool before its division; zero padding): AveragePool
    counting the padding, times the window's size."""
    y = _pool(graph, eqn, x, "AveragePool", count_include_pad=1)
    if y is x:
        return x
    size = np.prod([int(w) for w in eqn.params["window_dimensions"]])
    return graph.node("Mul", [y, np.array(size, _dtype(eqn))])


# Shapes ----------------------------------------------------------------------------------------


def _reshape(graph, eqn, x):
    if eqn.params.get("dimensions") is not None:
        raise unsupported(eqn, "dimensions")
    sizes = eqn.params["new_sizes"]
    symbolic = [i for i, size in enumerate(sizes) if not is_static(size)]
    if len(symbolic) <= 1:  # -1 stands for the one size that depends on the batch
        shape = _ints(-1 if i in symbolic else size for i, size in enumerate(sizes))
    else:
        shape = graph.shape(sizes)
    return graph.node("Reshape", [x, shape])


def _broadcast_in_dim(graph, eqn, x, *dynamic):
    if dynamic:
        raise unsupported(eqn, "dynamic shape")
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    new_axes = [i for i in range(len(shape)) if i not in dims]
    if new_axes:
        x = graph.node("Unsqueeze", [x, _ints(new_axes)])
    have = [1] * len(shape)
    for i, d in enumerate(dims):
        have[d] = _shape(eqn)[i]
    if all(same_dim(a, b) for a, b in zip(have, shape, strict=True)):
        return x
    target = [1 if same_dim(a, b) else b for a, b in zip(have, shape, strict=True)]
    return graph.node("Expand", [x, graph.shape(target)])


def _stack(graph, eqn, *xs):
    axis = int(eqn.params["axis"])
    parts = [graph.node("Unsqueeze", [x, _ints([axis])]) for x in xs]
    return graph.node("Concat", parts, axis=axis)


def _slice(graph, eqn, x):
    shape = _shape(eqn)
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * len(shape)
    axes = [
        i
        for i in range(len(shape))
        if not (same_dim(starts[i], 0) and same_dim(limits[i], shape[i]) and strides[i] == 1)
    ]
    if not axes:
        return x
    ends = [INT64_MAX if same_dim(limits[i], shape[i]) else limits[i] for i in axes]
    begin = graph.shape([starts[i] for i in axes])
    steps = _ints(strides[i] for i in axes)
    return graph.node("Slice", [x, begin, graph.shape(ends), _ints(axes), steps])


def _start(graph, index, dim, length):
    """An int64 [1] start index clamped into [0, dim - length] (as XLA clamps)."""
    if isinstance(index, np.ndarray):
        index = np.reshape(index, (1,)).astype(np.int64)
    else:
        index = graph.node("Cast", [index], to=_onnx_dtype(np.int64))
        index = graph.node("Reshape", [index, _ints([1])])
    upper = graph.arith("Sub", graph.dim(dim), graph.dim(length))
    return graph.arith("Min", graph.arith("Max", index, np.zeros(1, np.int64)), upper)


def _dynamic_slice(graph, eqn, x, *starts):
    shape, sizes = _shape(eqn), eqn.params["slice_sizes"]
    if len(starts) != len(shape):
        raise unsupported(eqn, "dynamic sizes")
    begin = [_start(graph, s, d, z) for s, d, z in zip(starts, shape, sizes, strict=True)]
    if all(isinstance(b, np.ndarray) for b in begin):
        begin = np.concatenate(begin)
    else:
        begin = graph.node("Concat", begin, axis=0)
    end = graph.arith("Add", begin, graph.shape(sizes))
    return graph.node("Slice", [x, begin, end, _ints(range(len(shape)))])


def _fill_value(eqn):
    """The value of out-of-bounds windows in mode=fill (jax's defaults when None)."""
    dtype, fill = np.dtype(eqn.outvars[0].aval.dtype), eqn.params["fill_value"]
    if fill is None and dtype.kind == "b":
        fill = True
    elif fill is None and dtype.kind in "iu":
        fill = np.iinfo(dtype).min if dtype.kind == "i" else np.iinfo(dtype).max
    return np.array(np.nan if fill is None else fill, dtype)


def _gather(graph, eqn, x, indices):
    """XLA gathers along one operand axis (take, or windows of a length along it): Gather of
    the clamped start indices (+ arange(length)), then XLA's output order; in mode=fill the
    windows that are not wholly inside get the fill value."""
    dn, sizes, shape = eqn.params["dimension_numbers"], eqn.params["slice_sizes"], _shape(eqn)
    index_shape = _shape(eqn, 1)
    if len(dn.start_index_map) != 1 or dn.operand_batching_dims or index_shape[-1] != 1:
        raise unsupported(eqn, "only gathers along one axis")
    (axis,) = dn.start_index_map
    collapsed = tuple(dn.collapsed_slice_dims)
    full = all(same_dim(sizes[d], shape[d]) for d in range(len(shape)) if d != axis)
    if not full or collapsed not in ((), (axis,)):
        raise unsupported(eqn, "only gathers of whole slices along one axis")
    batch_shape, length = index_shape[:-1], sizes[axis]
    if isinstance(indices, np.ndarray):
        start = indices.reshape(batch_shape).astype(np.int64)
    else:
        start = graph.node("Cast", [indices], to=_onnx_dtype(np.int64))
        start = graph.node("Squeeze", [start, _ints([-1])])
    upper = graph.arith("Sub", graph.dim(shape[axis]), graph.dim(length))
    if isinstance(upper, np.ndarray):
        upper = upper.reshape(())
    else:
        upper = graph.node("Squeeze", [upper, _ints([0])])
    index = graph.arith("Min", graph.arith("Max", start, np.zeros((), np.int64)), upper)
    if not collapsed:  # windows [start, start + length)
        index = graph.node("Unsqueeze", [index, _ints([-1])])
        index = graph.arith("Add", index, graph.arange(length))
    out = graph.node("Gather", [x, index], axis=int(axis))
    # ONNX's order: operand axes before `axis`, index batch axes, [the window], the rest.
    ours = [("o", d) for d in range(axis)] + [("b", k) for k in range(len(batch_shape))]
    ours += [("o", axis)] if not collapsed else []
    ours += [("o", d) for d in range(axis + 1, len(shape))]
    offsets = iter(d for d in range(len(shape)) if d not in collapsed)
    batches = iter(range(len(batch_shape)))
    rank = len(eqn.outvars[0].aval.shape)
    xla = [
        ("o", next(offsets)) if p in dn.offset_dims else ("b", next(batches)) for p in range(rank)
    ]
    out = _transpose(graph, out, [ours.index(label) for label in xla])
    if (
        "FILL_OR_DROP" not in str(eqn.params["mode"])
        or isinstance(start, np.ndarray)
        and (isinstance(upper, np.ndarray) and (start >= 0).all() and (start <= upper).all())
    ):
        return out
    inside = graph.node("And", [graph.node("GreaterOrEqual", [start, np.zeros((), np.int64)]),
                                graph.node("LessOrEqual", [start, upper])])  # fmt: skip
    inside = graph.node("Unsqueeze", [inside, _ints(dn.offset_dims)]) if dn.offset_dims else inside
    return graph.node("Where", [inside, out, _fill_value(eqn)])


def _iota(graph, eqn):
    shape, dim, dtype = eqn.params["shape"], eqn.params["dimension"], np.dtype(eqn.params["dtype"])
    axes = [-1 if i == dim else 1 for i in range(len(shape))]
    if all(is_static(size) for size in shape):
        values = np.arange(shape[dim], dtype=dtype).reshape(axes)
        return np.ascontiguousarray(np.broadcast_to(values, shape))
    values = graph.node("Cast", [graph.arange(shape[dim])], to=_onnx_dtype(dtype))
    others = [i for i in range(len(shape)) if i != dim]
    values = graph.node("Unsqueeze", [values, _ints(others)]) if others else values
    return graph.node("Expand", [values, graph.shape(shape)])


def _dim_as_value(graph, eqn):
    """A (symbolic) dimension size as a scalar, e.g. the batch size in an index computation."""
    size = graph.node("Squeeze", [graph.dim(eqn.params["dim"]), _ints([0])])
    return graph.node("Cast", [size], to=_onnx_dtype(eqn.outvars[0].aval.dtype))


# Linear algebra --------------------------------------------------------------------------------


def _dot_general(graph, eqn, lhs, rhs):
    """MatMul for [..., K] x [K, N]; otherwise an Einsum (batch, lhs free, rhs free axes)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_dtype = np.dtype(eqn.outvars[0].aval.dtype)
    if _dtype(eqn) != out_dtype or _dtype(eqn, 1) != out_dtype:
        lhs = graph.node("Cast", [lhs], to=_onnx_dtype(out_dtype))
        rhs = graph.node("Cast", [rhs], to=_onnx_dtype(out_dtype))
    lr, rr = len(_shape(eqn)), len(_shape(eqn, 1))
    if not lb and tuple(lc) == (lr - 1,) and rr == 2 and tuple(rc) == (0,):
        return graph.node("MatMul", [lhs, rhs])
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    left, right = [""] * lr, [""] * rr
    for a, b in [*zip(lb, rb, strict=True), *zip(lc, rc, strict=True)]:
        left[a] = right[b] = next(letters)
    left = [label or next(letters) for label in left]
    right = [label or next(letters) for label in right]
    out = [left[a] for a in lb]
    out += [left[i] for i in range(lr) if i not in lb and i not in lc]
    out += [right[i] for i in range(rr) if i not in rb and i not in rc]
    equation = f"{''.join(left)},{''.join(right)}->{''.join(out)}"
    return graph.node("Einsum", [lhs, rhs], equation=equation)


def _conv(graph, eqn, lhs, rhs):
    """conv_general_dilated in any layout: Conv on [N, C, spatial...] / [O, I, spatial...]."""
    p = eqn.params
    dn = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise unsupported(eqn, "lhs_dilation (transposed convolution) or batch_group_count")
    pads = [tuple(pad) for pad in p["padding"]]
    if min(min(pad) for pad in pads) < 0:
        raise unsupported(eqn, "negative padding")
    out = graph.node(
        "Conv",
        [_transpose(graph, lhs, dn.lhs_spec), _transpose(graph, rhs, dn.rhs_spec)],
        strides=[int(s) for s in p["window_strides"]],
        pads=[int(lo) for lo, _ in pads] + [int(hi) for _, hi in pads],
        dilations=[int(d) for d in p["rhs_dilation"]],
        group=int(p["feature_group_count"]),
    )
    return _transpose(graph, out, _inverse(dn.out_spec))  # out_spec[i]: where ONNX axis i goes


HANDLERS = {
    **{name: _unary(op) for name, op in {
        "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "tanh": "Tanh",
        "logistic": "Sigmoid", "erf": "Erf", "abs": "Abs", "sign": "Sign", "sin": "Sin",
        "cos": "Cos", "floor": "Floor", "ceil": "Ceil"}.items()},
    **{name: _binary(op) for name, op in {
        "add": "Add", "add_any": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max",
        "min": "Min", "pow": "Pow", "eq": "Equal", "lt": "Less", "le": "LessOrEqual",
        "gt": "Greater", "ge": "GreaterOrEqual"}.items()},
    "and": _logical("And", "BitwiseAnd"), "or": _logical("Or", "BitwiseOr"),
    "xor": _logical("Xor", "BitwiseXor"), "not": _logical("Not", "BitwiseNot"),
    "ne": lambda graph, eqn, x, y: graph.node("Not", [graph.node("Equal", [x, y])]),
    "rsqrt": lambda graph, eqn, x: graph.node("Reciprocal", [graph.node("Sqrt", [x])]),
    "square": lambda graph, eqn, x: graph.node("Mul", [x, x]),
    "rem": lambda graph, eqn, x, y: graph.node("Mod", [x, y], fmod=1),  # C's fmod, as lax.rem
    "clamp": lambda graph, eqn, lo, x, hi: graph.node("Min", [graph.node("Max", [x, lo]), hi]),
    "integer_pow": _integer_pow, "convert_element_type": _convert, "select_n": _select_n,
    "stop_gradient": _identity, "copy": _identity, "copy_p": _identity,
    "optimization_barrier": _identity,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"), "reduce_prod": _reduce("ReduceProd"),
    "argmax": _arg_reduce("ArgMax"), "argmin": _arg_reduce("ArgMin"),
    "reduce_window_max": _max_pool, "reduce_window_sum": _sum_pool,
    "reshape": _reshape, "broadcast_in_dim": _broadcast_in_dim, "stack": _stack,
    "squeeze": lambda graph, eqn, x: graph.node("Squeeze", [x, _ints(eqn.params["dimensions"])]),
    "transpose": lambda graph, eqn, x: _transpose(graph, x, eqn.params["permutation"]),
    "concatenate": lambda graph, eqn, *xs: graph.node(
        "Concat", list(xs), axis=int(eqn.params["dimension"])
    ),
    "slice": _slice, "dynamic_slice": _dynamic_slice, "gather": _gather, "iota": _iota,
    "dim_as_value": _dim_as_value,
    "dot_general": _dot_general, "conv_general_dilated": _conv,
}  # fmt: skip
