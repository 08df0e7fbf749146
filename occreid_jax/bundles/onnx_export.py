"""A small, exact JAX -> ONNX translator for the bundles' embedding functions.

`to_onnx(fn, specs, input_names)` traces `fn` with `jax.make_jaxpr` on `jax.ShapeDtypeStruct`
inputs whose batch dimension is symbolic (`jax.export.symbolic_shape("batch")`), and walks the
jaxpr:

* sub-jaxprs (jit, closed_call, custom_jvp_call, custom_vjp_call, remat) are inlined;
* an equation whose inputs are all constants (the weights and what is computed from them
  alone: batch-norm scales, position tables, ...) is folded: run once with jax, its result
  becomes a constant;
* every other equation becomes one or a few ONNX nodes (`onnx_ops.HANDLERS`, opset 18); a
  primitive without a handler is a `UserError` naming it.

Constants are stored as initializers. The symbolic batch becomes the ONNX dim_param "batch"
of the inputs and outputs; shapes that depend on it (a reshape to [3 * B, ...], a broadcast
to [B, ...]) are computed in the graph from `Shape` of the input that carries it.

Shapes: inputs as the specs give them (e.g. images [B, H, W, 3] float32); one ONNX output per
leaf of `fn`'s output pytree, named by its key (a dict {"global": [B, D], ...} gives outputs
"global", ...).
"""

from __future__ import annotations

import ast
import math

import jax
import numpy as np
import onnx
from jax.extend.core import Literal
from onnx import helper, numpy_helper

from occreid_jax.bundles.onnx_ops import HANDLERS, is_static, unsupported
from occreid_jax.errors import UserError

OPSET = 18  # ReduceMax / ReduceMin take their axes as an input from 18 on
IR_VERSION = 9  # loadable by onnxruntime >= 1.15
# Equations that call a sub-jaxpr, and the parameter that holds it: inlined.
CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}
FOLD_MIN_SIZE = 4096  # a folded result may hold this many elements even if its inputs are smaller
# Integer arithmetic done in numpy when both operands are constants.
NUMPY_OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum,
             "Min": np.minimum, "Div": np.floor_divide, "Mod": np.mod}  # fmt: skip


class Graph:
    """The ONNX graph being built: nodes, initializers, and the jaxpr walk that makes them.

    A value is an ONNX tensor name (str) or a numpy constant (np.ndarray); constants become
    initializers only when a node uses them.
    """

    def __init__(self, fold: bool = True):
        self.fold = fold
        self.nodes: list = []
        self.initializers: list = []
        self.dim_sources: dict[str, tuple[str, int]] = {}  # "batch" -> (input name, axis)
        self._count = 0
        self._consts: dict[int, tuple[np.ndarray, str]] = {}
        self._dims: dict[str, object] = {}

    def fresh(self, hint: str) -> str:
        """A new tensor name."""
        self._count += 1
        return f"{hint}_{self._count}"

    def name(self, value) -> str:
        """The tensor name of a value: a constant becomes an initializer (once per array)."""
        if isinstance(value, str):
            return value
        hit = self._consts.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        name = self.fresh("const")
        array = np.array(value, copy=not value.flags.c_contiguous)  # keeps 0-d arrays 0-d
        self.initializers.append(numpy_helper.from_array(array, name))
        self._consts[id(value)] = (value, name)
        return name

    def node(self, op: str, inputs: list, outputs: int = 1, **attrs):
        """Adds an ONNX node; returns its output name (a list of names if `outputs` > 1)."""
        names = [self.fresh(op.lower()) for _ in range(outputs)]
        inputs = ["" if value is None else self.name(value) for value in inputs]
        self.nodes.append(helper.make_node(op, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def arith(self, op: str, a, b):
        """Integer arithmetic on values: in numpy when both are constants, else a node."""
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return np.asarray(NUMPY_OPS[op](a, b), np.result_type(a, b))
        return self.node(op, [a, b])

    # Dimension sizes ------------------------------------------------------------------------

    def dim(self, size):
        """A dimension size as an int64 [1] value (a constant when it is static)."""
        if is_static(size):
            return np.array([int(size)], np.int64)
        text = str(size)
        if text not in self._dims:
            self._dims[text] = self._dim_expression(ast.parse(text, mode="eval").body, text)
        return self._dims[text]

    def _dim_expression(self, tree, text: str):
        """Evaluates a symbolic dimension (its text, e.g. "3*batch") in the graph."""
        binary = {ast.Add: "Add", ast.Sub: "Sub", ast.Mult: "Mul"}
        calls = {"floordiv": "Div", "mod": "Mod", "max": "Max", "min": "Min"}
        if isinstance(tree, ast.Constant) and isinstance(tree.value, int):
            return np.array([tree.value], np.int64)
        if isinstance(tree, ast.Name) and tree.id in self.dim_sources:
            source, axis = self.dim_sources[tree.id]
            return self.node("Shape", [source], start=axis, end=axis + 1)
        if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub):
            return self.arith(
                "Sub", np.zeros(1, np.int64), self._dim_expression(tree.operand, text)
            )
        if isinstance(tree, ast.BinOp) and type(tree.op) in binary:
            left = self._dim_expression(tree.left, text)
            return self.arith(binary[type(tree.op)], left, self._dim_expression(tree.right, text))
        if isinstance(tree, ast.Call) and getattr(tree.func, "id", "") in calls:
            left, right = (self._dim_expression(arg, text) for arg in tree.args)
            return self.arith(calls[tree.func.id], left, right)
        raise UserError(f"the ONNX export cannot compute the dimension size {text}")

    def shape(self, sizes) -> object:
        """A list of dimension sizes as an int64 [len] value (a constant when all are static)."""
        if all(is_static(size) for size in sizes):
            return np.array([int(size) for size in sizes], np.int64)
        return self.node("Concat", [self.dim(size) for size in sizes], axis=0)

    def arange(self, length):
        """0, 1, ..., length - 1 as int64 [length] (a constant when the length is static)."""
        if is_static(length):
            return np.arange(int(length), dtype=np.int64)
        stop = self.node("Squeeze", [self.dim(length), np.zeros(1, np.int64)])
        return self.node("Range", [np.array(0, np.int64), stop, np.array(1, np.int64)])

    # The jaxpr walk -------------------------------------------------------------------------

    def run(self, jaxpr, consts, args) -> list:
        """Translates a jaxpr applied to `args` (values); returns the values of its outputs."""
        env = dict(zip(jaxpr.constvars, (np.asarray(c) for c in consts), strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))

        def read(var):
            if isinstance(var, Literal):
                return np.asarray(var.val, var.aval.dtype)
            return env[var]

        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(var) for var in eqn.invars])
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(var) for var in jaxpr.outvars]

    def equation(self, eqn, args: list) -> list:
        """The output values of one equation: inlined, folded, or translated."""
        name = eqn.primitive.name
        if name in CALLS:
            sub = eqn.params[CALLS[name]]
            consts = getattr(sub, "consts", [])
            return self.run(getattr(sub, "jaxpr", sub), consts, args)
        if self.fold and self._foldable(eqn, args):
            outs = eqn.primitive.bind(*args, **eqn.params)  # no sub-jaxprs: those are inlined
            outs = outs if eqn.primitive.multiple_results else [outs]
            return [np.asarray(out) for out in outs]
        handler = HANDLERS.get(name)
        if handler is None:
            raise unsupported(eqn)
        outs = handler(self, eqn, *args)
        return list(outs) if eqn.primitive.multiple_results else [outs]

    @staticmethod
    def _foldable(eqn, args) -> bool:
        """All inputs constant, static outputs not much larger than the inputs."""
        if not all(isinstance(arg, np.ndarray) for arg in args) or _symbolic(eqn.params):
            return False
        shapes = [var.aval.shape for var in eqn.outvars]
        if not all(is_static(size) for shape in shapes for size in shape):
            return False
        limit = max(FOLD_MIN_SIZE, sum(arg.size for arg in args))
        return sum(math.prod(shape) for shape in shapes) <= limit


def _symbolic(params) -> bool:
    """Whether equation parameters hold a symbolic dimension size (e.g. dim_as_value's)."""
    values = params.values() if isinstance(params, dict) else params
    for value in values:
        if isinstance(value, tuple | list) and _symbolic(value):
            return True
        if jax.export.is_symbolic_dim(value):
            return True
    return False


def _leaf_name(path) -> str:
    """The output name of a pytree leaf: its dict keys (or indices) joined by "_"."""
    parts = [getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))) for key in path]
    return "_".join(str(part) for part in parts) or "output"


def _value_info(name: str, shape, dtype):
    """A graph input / output: symbolic sizes become dim_params (their text, e.g. "batch")."""
    dims = [int(size) if is_static(size) else str(size) for size in shape]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), dims)


def to_onnx(fn, specs, input_names, *, fold: bool = True) -> onnx.ModelProto:
    """Translates `fn(*inputs)` into a checked ONNX model.

    Args:
      fn: a jax-traceable function of arrays returning a pytree (e.g. dict) of arrays.
      specs: one `jax.ShapeDtypeStruct` per input; symbolic sizes (`jax.export.symbolic_shape`)
        become dim_params, e.g. images [batch, H, W, 3] float32.
      input_names: the ONNX input names, one per spec (e.g. "images", "heatmaps").
      fold: compute equations whose inputs are all constants with jax at export time.

    Returns:
      the ModelProto (opset `OPSET`), outputs named by the output pytree's keys.

    Raises:
      UserError: a primitive (or a setting of one) without an ONNX translation.
    """
    closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(*specs)
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(out_shapes)[0]]
    output_names = [_leaf_name(path) for path in paths]
    graph = Graph(fold)
    for name, spec in zip(input_names, specs, strict=True):
        for axis, size in enumerate(spec.shape):
            if not is_static(size):
                graph.dim_sources.setdefault(str(size), (name, axis))
    outs = graph.run(closed.jaxpr, closed.consts, list(input_names))
    for value, name in zip(outs, output_names, strict=True):
        graph.nodes.append(helper.make_node("Identity", [graph.name(value)], [name]))
    outvars = closed.jaxpr.outvars
    onnx_graph = helper.make_graph(
        graph.nodes,
        "embed",
        [_value_info(n, s.shape, s.dtype) for n, s in zip(input_names, specs, strict=True)],
        [
            _value_info(n, v.aval.shape, v.aval.dtype)
            for n, v in zip(output_names, outvars, strict=True)
        ],
        initializer=graph.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="occreid_jax",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model
