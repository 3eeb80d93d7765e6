"""Calculated tags: safe, vectorized arithmetic over a device's tags.

An expression is parsed once with the stdlib :mod:`ast` module and compiled into a tree of numpy
operations; user text is never passed to ``eval`` or ``compile``. Allowed: numeric constants,
names from a given set, ``+ - * / ** %``, unary ``+``/``-``, comparisons (chains too) and the
functions ``abs min max sqrt exp log log10 sin cos tan floor ceil round clip(x, lo, hi)
where(cond, a, b)``. Anything else (attributes, subscripts, lambdas, comprehensions, ``and``/``or``,
strings, unknown names or functions) is refused at parse time with an :class:`ExpressionError`
naming the construct and its 1-based column.

Semantics (IEEE, no exceptions while evaluating): division by zero gives ``±inf``/NaN, ``sqrt`` and
``log`` of negative numbers NaN; a comparison is ``1.0``/``0.0`` and NaN if either side is NaN;
``where(c, a, b)`` is ``a`` where ``c`` is non-zero, ``b`` where it is zero, NaN where ``c`` is NaN;
``min``/``max`` propagate NaN; ``round`` rounds half to even (like Python's ``round``).

Signed zeros follow IEEE 754 as numpy computes it, because they decide the sign of ``x / 0``:
``-(0.0)`` is ``-0.0``, ``floor(-0.0)`` and ``ceil(-0.5)`` are ``-0.0`` (Python's ``math.floor``
returns the *integer* 0 and loses the sign; this evaluator does not), so ``1 / -(floor(-(a)))`` at
``a = 0`` is ``+inf``. ``min``/``max``/``clip`` order ``-0.0`` below ``+0.0`` (IEEE 754-2019
``minimum``/``maximum``), whatever the argument order.

>>> Expression.parse("1 / -(floor(-(a)))", ["a"]).evaluate({"a": np.array([0.0])}).tolist()
[inf]
>>> Expression.parse("1 / min(a, -a)", ["a"]).evaluate({"a": np.array([0.0, -0.0])}).tolist()
[-inf, -inf]

>>> e = Expression.parse("voltage * current * 0.5", ["voltage", "current"])
>>> e.evaluate({"voltage": np.array([230.0, 400.0]), "current": np.array([10.0, 5.0])}).tolist()
[1150.0, 1000.0]
>>> Expression.parse("voltage * curent", ["current", "voltage"])
Traceback (most recent call last):
...
operators.expressions.ExpressionError: unknown name 'curent' at column 11; known: current, voltage
>>> Expression.parse("__import__('os')", ["x"])
Traceback (most recent call last):
...
operators.expressions.ExpressionError: function '__import__' is not allowed at column 1; allowed: abs, ceil, clip, cos, exp, floor, log, log10, max, min, round, sin, sqrt, tan, where
"""

from __future__ import annotations

import ast
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from core.batch import PointBatch, tag_id_for

__all__ = ["CalculatedState", "CalculatedTags", "Expression", "ExpressionError"]

_F64 = npt.NDArray[np.float64]
_Env = Mapping[str, Any]
_Node = Callable[[_Env], Any]


class ExpressionError(ValueError):
    """An expression that cannot be accepted; ``column`` is 1-based (``None`` if not positional)."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


# -- functions --------------------------------------------------------------------------------------


def _nan_where(mask: Any, value: Any) -> Any:
    return np.where(mask, np.nan, value)


def _where(c: Any, a: Any, b: Any) -> Any:
    c = np.asarray(c, dtype=np.float64)
    return _nan_where(np.isnan(c), np.where(c != 0, a, b))


def _round(x: Any, ndigits: Any = 0) -> Any:
    return np.round(x, int(ndigits))


def _minimum(a: Any, b: Any) -> Any:
    """``np.minimum`` with IEEE 754-2019's order of zeros (-0.0 below +0.0); numpy returns its
    second argument for equal zeros, so ``min(0.0, -0.0)`` and ``min(-0.0, 0.0)`` would differ."""
    zeros = (a == 0) & (b == 0)
    out = np.minimum(a, b)
    return np.where(zeros, np.where(np.signbit(a), a, b), out) if np.any(zeros) else out


def _maximum(a: Any, b: Any) -> Any:
    """``np.maximum`` with +0.0 above -0.0 (see :func:`_minimum`)."""
    zeros = (a == 0) & (b == 0)
    out = np.maximum(a, b)
    return np.where(zeros, np.where(np.signbit(a), b, a), out) if np.any(zeros) else out


def _clip(x: Any, lo: Any, hi: Any) -> Any:
    return _minimum(_maximum(x, lo), hi)


def _reduce(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return out

    return call


_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    # name: (implementation, min args, max args)
    "abs": (np.abs, 1, 1),
    "min": (_reduce(_minimum), 2, 64),
    "max": (_reduce(_maximum), 2, 64),
    "sqrt": (np.sqrt, 1, 1),
    "exp": (np.exp, 1, 1),
    "log": (np.log, 1, 1),
    "log10": (np.log10, 1, 1),
    "sin": (np.sin, 1, 1),
    "cos": (np.cos, 1, 1),
    "tan": (np.tan, 1, 1),
    "floor": (np.floor, 1, 1),
    "ceil": (np.ceil, 1, 1),
    "round": (_round, 1, 2),
    "clip": (_clip, 3, 3),
    "where": (_where, 3, 3),
}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
    ast.Mod: np.mod,
}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}

_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
    ast.BoolOp: "'and'/'or' (use where() and comparisons)",
    ast.IfExp: "conditional expression (use where(cond, a, b))",
    ast.NamedExpr: "assignment expression",
    ast.Starred: "starred argument",
    ast.JoinedStr: "string",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.Await: "await",
}


def _compare(op: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    with np.errstate(invalid="ignore"):
        return _nan_where(np.isnan(a) | np.isnan(b), op(a, b).astype(np.float64))


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression: evaluate it with :meth:`evaluate` on arrays (or scalars).

    ``names`` are the names the expression actually uses, sorted.

    >>> Expression.parse("where(x > 2, clip(x, 0, 3), -x) % 2", ["x"]).evaluate({"x": np.arange(5.0)}).tolist()
    [0.0, 1.0, 0.0, 1.0, 1.0]
    """

    text: str
    names: tuple[str, ...]
    _fn: _Node

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reparse, (self.text, self.names))

    @classmethod
    def parse(cls, text: str, names: Collection[str]) -> Expression:
        """Parse and compile ``text``; ``names`` are the names it may use."""
        known = frozenset(names)
        if len(text) > MAX_EXPRESSION_CHARS:
            raise ExpressionError(
                f"expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_CHARS}"
            )
        try:
            tree = ast.parse(text.strip(), mode="eval")
            _check_depth(tree.body)
            used: set[str] = set()
            fn = _Compiler(text.strip(), known, used).compile(tree.body)
        except SyntaxError as exc:
            raise ExpressionError(f"syntax error at column {exc.offset}: {exc.msg}", exc.offset) from None
        except (RecursionError, MemoryError):
            # CPython's parser and the compiler below recurse per nesting level
            raise ExpressionError(
                f"expression is nested too deeply (the limit is {MAX_EXPRESSION_DEPTH} levels)"
            ) from None
        return cls(text=text, names=tuple(sorted(used)), _fn=fn)

    def evaluate(self, env: Mapping[str, npt.ArrayLike]) -> _F64:
        """The expression over ``env`` (name -> array or scalar), as a float64 array.

        The result has the broadcast shape of the used inputs (a 0-d array if it uses none).
        """
        arrays = {n: np.asarray(env[n], dtype=np.float64) for n in self.names}
        with np.errstate(all="ignore"):
            out = np.asarray(self._fn(arrays), dtype=np.float64)
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values())) if arrays else ()
        if out.shape != shape:
            out = np.broadcast_to(out, shape).copy()
        return out


MAX_EXPRESSION_CHARS = 10_000
"""A calculated tag is a formula, not a program: longer text is refused before parsing."""
MAX_EXPRESSION_DEPTH = 200
"""Nesting levels of an expression (operators, calls, parentheses); the evaluator recurses per level."""


def _check_depth(root: ast.AST) -> None:
    """:class:`ExpressionError` when the tree is nested deeper than ``MAX_EXPRESSION_DEPTH`` (iterative)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise ExpressionError(
                f"expression is nested too deeply (the limit is {MAX_EXPRESSION_DEPTH} levels)"
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _reparse(text: str, names: tuple[str, ...]) -> Expression:
    return Expression.parse(text, names)


class _Compiler:
    def __init__(self, text: str, known: frozenset[str], used: set[str]) -> None:
        self.text = text
        self.known = known
        self.used = used
        # the parser NFKC-normalises identifiers (e.g. the micro sign becomes Greek mu)
        self.spelling = {unicodedata.normalize("NFKC", n): n for n in known}

    def _col(self, node: ast.AST) -> int:
        line = self.text.splitlines()[getattr(node, "lineno", 1) - 1] if self.text else ""
        # ast offsets are in UTF-8 bytes; report characters, 1-based
        return len(line.encode()[: getattr(node, "col_offset", 0)].decode(errors="replace")) + 1

    def _fail(self, what: str, node: ast.AST, hint: str = "") -> ExpressionError:
        col = self._col(node)
        return ExpressionError(f"{what} at column {col}{hint}", col)

    def compile(self, node: ast.AST) -> _Node:
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise self._fail(f"constant {v!r} is not allowed (numbers only)", node)
            const = float(v)
            return lambda env: const
        if isinstance(node, ast.Name):
            name = self.spelling.get(node.id, node.id)
            if name not in self.known:
                col = self._col(node)
                raise ExpressionError(
                    f"unknown name {name!r} at column {col}; known: {', '.join(sorted(self.known))}", col
                )
            self.used.add(name)
            return lambda env: env[name]
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                raise self._fail(f"operator {type(node.op).__name__} is not allowed", node)
            left, right = self.compile(node.left), self.compile(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.UnaryOp):
            operand = self.compile(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: np.negative(operand(env))
            if isinstance(node.op, ast.UAdd):
                return operand
            raise self._fail(f"operator {type(node.op).__name__} is not allowed", node)
        if isinstance(node, ast.Compare):
            operands = [self.compile(node.left), *(self.compile(c) for c in node.comparators)]
            ops: list[Callable[[Any, Any], Any]] = []
            for o in node.ops:
                f = _COMPARE.get(type(o))
                if f is None:
                    raise self._fail(f"comparison {type(o).__name__} is not allowed", node)
                ops.append(f)

            def compare(env: _Env) -> Any:
                values = [fn(env) for fn in operands]
                out: Any = None
                for i, f in enumerate(ops):
                    r = _compare(f, values[i], values[i + 1])
                    out = r if out is None else np.minimum(out, r)  # AND of 1.0/0.0, NaN propagates
                return out

            return compare
        if isinstance(node, ast.Call):
            return self._call(node)
        what = _CONSTRUCTS.get(type(node), type(node).__name__)
        raise self._fail(f"{what} is not allowed", node)

    def _call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name):
            raise self._fail("only calls of plain function names are allowed", node)
        name = node.func.id
        spec = _FUNCTIONS.get(name)
        if spec is None:
            raise self._fail(
                f"function {name!r} is not allowed", node, f"; allowed: {', '.join(sorted(_FUNCTIONS))}"
            )
        if node.keywords:
            raise self._fail(f"keyword arguments to {name}() are not allowed", node)
        fn, lo, hi = spec
        if not lo <= len(node.args) <= hi:
            expected = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self._fail(f"{name}() takes {expected} arguments, got {len(node.args)}", node)
        if name == "round" and len(node.args) == 2:
            nd = node.args[1]
            if not (isinstance(nd, ast.Constant) and type(nd.value) is int):
                raise self._fail("round() digits must be an integer constant", nd)
        args = [self.compile(a) for a in node.args]
        if len(args) == 1:
            (a0,) = args
            return lambda env: fn(a0(env))
        return lambda env: fn(*(a(env) for a in args))


# -- calculated tags --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class CalculatedState:
    """Last value, time and quality of each input tag of one device (aligned to sorted ``tag_ids``).

    ``seen`` is false for an input that has not arrived yet. Never modified by the core.
    """

    tag_ids: npt.NDArray[np.int64]
    value: _F64
    ts_ns: npt.NDArray[np.int64]
    quality: npt.NDArray[np.uint8]
    seen: npt.NDArray[np.bool_]

    @classmethod
    def for_tags(cls, tag_ids: npt.NDArray[np.int64]) -> CalculatedState:
        n = len(tag_ids)
        return cls(
            tag_ids=tag_ids.copy(),
            value=np.full(n, np.nan),
            ts_ns=np.full(n, np.iinfo(np.int64).min, dtype=np.int64),
            quality=np.zeros(n, dtype=np.uint8),
            seen=np.zeros(n, dtype=bool),
        )


class CalculatedTags:
    """Calculated tags of one device: ``definitions`` maps a new tag name to its expression.

    ``tag_names`` maps the device's input tag names to their tag ids. An expression may use input
    tags and other calculated tags (in any order; cycles are refused). A calculated point gets the
    tag id ``tag_id_for(device_id, name)``.

    :meth:`apply` keeps the last value of every input tag; when a batch brings a newer point of
    any (transitive) input of a calculation, one point of that calculation is appended:

    - value: the expression over the inputs' latest values;
    - timestamp: the largest timestamp among its inputs' points in this batch;
    - quality: the worst (highest) code among all its inputs' latest qualities; if that is bad
      (>= 128) the value is NaN.

    A calculation waits until each of its inputs has been seen once. A point older than the one
    kept for its tag (late or out of order) does not replace it and triggers nothing.

    >>> calc = CalculatedTags("m1", {"power": "voltage * current / 1000"}, {"voltage": 1, "current": 2})
    >>> state, out = calc.apply(calc.initial_state(), PointBatch.from_values("m1", [1, 2], [400.0, 5.0], ts_ns=7))
    >>> out.values.tolist(), int(out.tag_ids[-1]) == tag_id_for("m1", "power")
    ([400.0, 5.0, 2.0], True)
    >>> state, out = calc.apply(state, PointBatch.from_values("m1", [2], [10.0], ts_ns=8, quality=129))
    >>> out.values.tolist(), out.quality.tolist()
    ([10.0, nan], [129, 129])
    """

    def __init__(self, device_id: str, definitions: Mapping[str, str], tag_names: Mapping[str, int]) -> None:
        self.device_id = device_id
        self.definitions: Mapping[str, str] = MappingProxyType(dict(definitions))
        self.tag_names: Mapping[str, int] = MappingProxyType(dict(tag_names))
        self._compile()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "definitions": dict(self.definitions),
            "tag_names": dict(self.tag_names),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["device_id"], state["definitions"], state["tag_names"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CalculatedTags({self.device_id!r}, {dict(self.definitions)!r})"

    def _compile(self) -> None:
        for name in self.definitions:
            if name in self.tag_names:
                raise ExpressionError(f"calculated tag {name!r} has the name of an input tag")
        known = set(self.tag_names) | set(self.definitions)
        parsed: dict[str, Expression] = {}
        for name, text in self.definitions.items():
            try:
                parsed[name] = Expression.parse(text, known)
            except ExpressionError as exc:
                raise ExpressionError(f"calculated tag {name!r}: {exc}", exc.column) from None
        self.expressions: Mapping[str, Expression] = MappingProxyType(parsed)
        self._order = _topological(parsed, set(self.definitions))
        # transitive input tags of each calculation
        inputs: dict[str, set[str]] = {}
        for name in self._order:
            deps: set[str] = set()
            for n in parsed[name].names:
                deps |= inputs[n] if n in parsed else {n}
            inputs[name] = deps
        used = sorted({self.tag_names[n] for deps in inputs.values() for n in deps})
        self._ids = np.array(used, dtype=np.int64)
        pos = {t: i for i, t in enumerate(used)}
        self._calc_inputs = {
            name: np.array(sorted(pos[self.tag_names[n]] for n in deps), dtype=np.intp)
            for name, deps in inputs.items()
        }
        self._calc_id_array = np.array([tag_id_for(self.device_id, n) for n in self._order], dtype=np.int64)
        self._dep = np.zeros((len(self._order), len(used)), dtype=bool)
        self._closure = np.eye(len(self._order), dtype=bool)  # row: the calculations a calculation needs
        index = {n: j for j, n in enumerate(self._order)}
        for j, name in enumerate(self._order):
            self._dep[j, self._calc_inputs[name]] = True
            for n in parsed[name].names:
                if n in index:
                    self._closure[j] |= self._closure[index[n]]
        self._input_pos = {n: pos[t] for n, t in self.tag_names.items() if t in pos}

    def initial_state(self) -> CalculatedState:
        return CalculatedState.for_tags(self._ids)

    def _aligned(self, state: CalculatedState) -> CalculatedState:
        if state.tag_ids.shape == self._ids.shape and np.array_equal(state.tag_ids, self._ids):
            return state
        # configuration changed (e.g. state resumed from an older version): keep what still applies
        fresh = CalculatedState.for_tags(self._ids)
        idx = np.searchsorted(state.tag_ids, self._ids)
        idx = np.minimum(idx, max(len(state.tag_ids) - 1, 0))
        hit = state.tag_ids[idx] == self._ids if len(state.tag_ids) else np.zeros(len(self._ids), bool)
        for col in ("value", "ts_ns", "quality", "seen"):
            getattr(fresh, col)[hit] = getattr(state, col)[idx[hit]]
        return fresh

    def apply(self, state: CalculatedState, batch: PointBatch) -> tuple[CalculatedState, PointBatch]:
        """The new state and ``batch`` with the calculated points appended (neither is modified)."""
        if len(self._ids) == 0 or len(batch) == 0 or batch.device_id != self.device_id:
            return state, batch
        state = self._aligned(state)
        n_in = len(self._ids)
        pos = np.minimum(np.searchsorted(self._ids, batch.tag_ids), n_in - 1)
        is_input = self._ids[pos] == batch.tag_ids
        if not is_input.any():
            return state, batch
        idx = np.flatnonzero(is_input)
        p, ts = pos[idx], batch.ts_ns[idx]
        # the newest point of each input tag in this batch (ties: the later in the batch)
        order = np.lexsort((idx, ts, p))
        last = np.ones(len(order), dtype=bool)
        last[:-1] = p[order][1:] != p[order][:-1]
        pick = idx[order[last]]
        ppos = pos[pick]
        newer = batch.ts_ns[pick] >= state.ts_ns[ppos]
        if not newer.any():
            return state, batch
        pick, ppos = pick[newer], ppos[newer]
        value, ts_ns, quality, seen = (
            state.value.copy(),
            state.ts_ns.copy(),
            state.quality.copy(),
            state.seen.copy(),
        )
        value[ppos] = batch.values[pick]
        ts_ns[ppos] = batch.ts_ns[pick]
        quality[ppos] = batch.quality[pick]
        seen[ppos] = True
        new_state = CalculatedState(state.tag_ids, value, ts_ns, quality, seen)

        updated = np.zeros(n_in, dtype=bool)
        updated[ppos] = True
        dep = self._dep  # calculations x inputs (transitive)
        emit = (dep & updated).any(axis=1) & (~dep | seen).all(axis=1)
        if not emit.any():
            return new_state, batch
        need = self._closure[emit].any(axis=0)  # emitted calculations and what they use
        out_q = np.where(dep[emit], quality, 0).max(axis=1).astype(np.uint8)
        out_ts = np.where(dep[emit] & updated, ts_ns, np.iinfo(np.int64).min).max(axis=1)
        env: dict[str, Any] = {n: value[i : i + 1] for n, i in self._input_pos.items()}
        results = np.empty(len(self._order))
        with np.errstate(all="ignore"):
            for j in np.flatnonzero(need):
                name = self._order[j]
                env[name] = r = np.asarray(self.expressions[name]._fn(env), dtype=np.float64)
                results[j] = r.reshape(-1)[0]
        out_v = np.where(out_q >= 128, np.nan, results[emit])
        out_ids = self._calc_id_array[emit]
        return new_state, PointBatch(
            device_id=batch.device_id,
            ts_ns=np.concatenate([batch.ts_ns, out_ts]),
            tag_ids=np.concatenate([batch.tag_ids, out_ids]),
            values=np.concatenate([batch.values, out_v]),
            quality=np.concatenate([batch.quality, out_q]),
            text=batch.text,
        )


def _topological(parsed: Mapping[str, Expression], calcs: set[str]) -> list[str]:
    """Calculations in dependency order; :class:`ExpressionError` naming a cycle."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in done:
            return
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise ExpressionError(f"calculated tags form a cycle: {' -> '.join(cycle)}")
        for dep in parsed[name].names:
            if dep in calcs:
                visit(dep, [*path, name])
        done.add(name)
        order.append(name)

    for name in parsed:
        visit(name, [])
    return order
