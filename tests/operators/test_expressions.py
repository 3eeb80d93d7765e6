"""Calculated tags: the safe parser, vectorized == per-point evaluation, and the operator contract."""

from __future__ import annotations

import ast
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import PointBatch, tag_id_for
from core.quality import Quality
from operators.expressions import CalculatedState, CalculatedTags, Expression, ExpressionError
from tests.operators.operators_reference import copy_of, frozen, same_batch

S = 1_000_000_000

# -- the parser refuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("voltage * curent", "unknown name 'curent' at column 11; known: current, voltage"),
        ("voltage.real", "attribute access is not allowed at column 1"),
        ("voltage[0]", "subscript is not allowed at column 1"),
        ("(lambda: 1)()", "only calls of plain function names are allowed at column 1"),
        ("lambda: 1", "lambda is not allowed at column 1"),
        ("[v for v in current]", "comprehension is not allowed at column 1"),
        ("current and voltage", "'and'/'or'"),
        ("'a' + current", "constant 'a' is not allowed"),
        ("True + current", "constant True is not allowed"),
        ("open('x')", "function 'open' is not allowed at column 1"),
        ("current // 2", "operator FloorDiv is not allowed"),
        ("~current", "operator Invert is not allowed"),
        ("current in voltage", "comparison In is not allowed"),
        ("clip(current, 1)", "clip() takes 3 arguments, got 2"),
        ("round(current, voltage)", "round() digits must be an integer constant at column 16"),
        ("max(current=1, voltage=2)", "keyword arguments to max() are not allowed at column 1"),
        ("current +", "syntax error"),
        ("1 if current else 2", "conditional expression"),
        ("__import__('os').system('x')", "only calls of plain function names are allowed"),
    ],
)
def test_refuses_with_the_construct_and_its_column(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as err:
        Expression.parse(text, ["current", "voltage"])
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_column_counts_characters_not_bytes_and_names_are_nfkc_normalised() -> None:
    with pytest.raises(ExpressionError, match="unknown name 'x' at column 9") as err:
        Expression.parse("\u00e9 + 1 + x", ["\u00e9"])
    assert err.value.column == 9
    # Python folds the micro sign into Greek mu when parsing; the tag's own spelling still works
    e = Expression.parse("\u00b5 * 2", ["\u00b5"])
    assert e.names == ("\u00b5",) and e.evaluate({"\u00b5": np.array([2.0])}).tolist() == [4.0]


def test_semantics_of_edge_cases() -> None:
    env = {"x": np.array([-1.0, 0.0, 2.0, np.nan])}

    def ev(text: str) -> list[float]:
        return Expression.parse(text, ["x"]).evaluate(env).tolist()

    nan = math.nan
    assert np.allclose(ev("1 / x"), [-1.0, math.inf, 0.5, nan], equal_nan=True)
    assert np.allclose(ev("sqrt(x)"), [nan, 0.0, math.sqrt(2), nan], equal_nan=True)
    assert np.allclose(ev("x > 0"), [0.0, 0.0, 1.0, nan], equal_nan=True)
    assert np.allclose(ev("-1 <= x < 2"), [1.0, 1.0, 0.0, nan], equal_nan=True)
    assert np.allclose(ev("where(x, 10, 20)"), [10.0, 20.0, 10.0, nan], equal_nan=True)
    assert np.allclose(ev("max(x, 0, -5)"), [0.0, 0.0, 2.0, nan], equal_nan=True)
    assert np.allclose(ev("clip(x * 10, -5, 5)"), [-5.0, 0.0, 5.0, nan], equal_nan=True)
    assert ev("round(x + 0.5)")[:3] == [-0.0, 0.0, 2.0]  # half to even, like Python
    assert ev("round(x / 3, 2)")[:3] == [-0.33, 0.0, 0.67]
    assert Expression.parse("2 ** 10 % 1000", []).evaluate({}).tolist() == 24.0  # 0-d without inputs
    assert Expression.parse("x", ["x", "y"]).names == ("x",)


def test_an_expression_pickles() -> None:
    e = Expression.parse("sin(x) * y", ["x", "y"])
    e2 = pickle.loads(pickle.dumps(e))
    env = {"x": np.linspace(0, 3, 7), "y": np.arange(7.0)}
    assert e2.evaluate(env).tolist() == e.evaluate(env).tolist()


# -- vectorized == per-point reference ------------------------------------------------------------


def _py_div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b)
    return a / b


def _py_cmp(op: ast.cmpop, a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    result = {
        ast.Lt: a < b,
        ast.LtE: a <= b,
        ast.Gt: a > b,
        ast.GtE: a >= b,
        ast.Eq: a == b,
        ast.NotEq: a != b,
    }[type(op)]
    return 1.0 if result else 0.0


def _py_minmax(pick, args: list[float]) -> float:  # type: ignore[no-untyped-def]
    # -0.0 orders below +0.0 (IEEE 754-2019 minimum/maximum), the evaluator's documented rule
    return (
        math.nan if any(math.isnan(a) for a in args) else pick(args, key=lambda x: (x, math.copysign(1, x)))
    )


def py_eval(node: ast.AST, env: dict[str, float]) -> float:
    """Per-point reference: plain Python floats and ``math``, IEEE results instead of exceptions."""
    if isinstance(node, ast.Expression):
        return py_eval(node.body, env)
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp):
        v = py_eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = py_eval(node.left, env), py_eval(node.right, env)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return _py_div(a, b)
        raise AssertionError(node.op)
    if isinstance(node, ast.Compare):
        values = [py_eval(node.left, env), *(py_eval(c, env) for c in node.comparators)]
        results = [_py_cmp(o, values[i], values[i + 1]) for i, o in enumerate(node.ops)]
        return math.nan if any(math.isnan(r) for r in results) else min(results)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    args = [py_eval(a, env) for a in node.args]
    name = node.func.id
    if name == "abs":
        return abs(args[0])
    if name == "min":
        return _py_minmax(min, args)
    if name == "max":
        return _py_minmax(max, args)
    if name in ("floor", "ceil"):
        # IEEE floor/ceil keep the sign of a zero result (floor(-0.0) == ceil(-0.5) == -0.0);
        # math.floor and math.ceil return an int, which has no sign of zero
        x = args[0]
        if not math.isfinite(x):
            return x
        r = float(math.floor(x) if name == "floor" else math.ceil(x))
        return math.copysign(r, x) if r == 0 else r
    if name == "clip":
        x, lo, hi = args
        return _py_minmax(min, [_py_minmax(max, [x, lo]), hi])
    if name == "where":
        c, a, b = args
        return math.nan if math.isnan(c) else (a if c != 0 else b)
    raise AssertionError(name)


NAMES = ("a", "b", "c")
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64)
leaf = st.one_of(st.sampled_from(NAMES), st.integers(-5, 5).map(str), finite.map(lambda f: f"({f!r})"))


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "<", ">=", "==", "!="]), children)
    return st.one_of(
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda x: f"-({x})"),
        st.tuples(st.sampled_from(["abs", "floor", "ceil"]), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(["min", "max"]), st.lists(children, min_size=2, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.tuples(st.sampled_from(["clip", "where"]), children, children, children).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]}, {t[3]})"
        ),
    )


expressions = st.recursive(leaf, _extend, max_leaves=12)
values = st.one_of(finite, st.just(0.0), st.just(math.nan), st.just(math.inf))


@settings(max_examples=150, deadline=None)
@given(text=expressions, rows=st.lists(st.tuples(values, values, values), min_size=1, max_size=8))
def test_vectorized_equals_per_point_python(text: str, rows: list[tuple[float, float, float]]) -> None:
    expr = Expression.parse(text, NAMES)
    columns = {n: np.array([r[i] for r in rows]) for i, n in enumerate(NAMES)}
    got = np.broadcast_to(expr.evaluate(columns), (len(rows),))  # 0-d when it uses no input
    tree = ast.parse(text, mode="eval")
    for i, row in enumerate(rows):
        want = py_eval(tree, dict(zip(NAMES, row, strict=True)))
        assert (math.isnan(want) and math.isnan(got[i])) or got[i] == pytest.approx(want, rel=1e-12, abs=0), (
            text,
            row,
        )
        if want == 0:  # signed zeros decide the sign of a later x / 0: they must agree too
            assert math.copysign(1, want) == math.copysign(1, got[i]), (text, row, want, got[i])


@pytest.mark.parametrize(
    ("text", "a", "want"),
    [
        ("1 / -(floor(-(a)))", 0.0, math.inf),  # hypothesis found it: the reference said -inf
        ("1 / floor(-(a))", 0.0, -math.inf),
        ("1 / ceil(a)", -0.5, -math.inf),
        ("1 / min(a, -(a))", 0.0, -math.inf),
        ("1 / min(-(a), a)", 0.0, -math.inf),
        ("1 / max(a, -(a))", 0.0, math.inf),
        ("1 / max(-(a), a)", 0.0, math.inf),
        ("1 / clip(-(a), a, 1)", 0.0, math.inf),
    ],
)
def test_signed_zeros_follow_ieee(text: str, a: float, want: float) -> None:
    got = Expression.parse(text, ["a"]).evaluate({"a": np.array([a])})
    assert got.tolist() == [want]
    assert py_eval(ast.parse(text, mode="eval"), {"a": a}) == want


# -- calculated tags ----------------------------------------------------------------------------------

TAGS = {"voltage": 1, "current": 2, "cos_phi": 3, "temp": 4}
DEFS = {
    "apparent": "voltage * current * 0.001",
    "power": "apparent * cos_phi",  # uses another calculation
    "hot": "temp > 80",
}
POWER = tag_id_for("m1", "power")
APPARENT = tag_id_for("m1", "apparent")
HOT = tag_id_for("m1", "hot")


def calcs() -> CalculatedTags:
    return CalculatedTags("m1", DEFS, TAGS)


def calc_points(batch: PointBatch) -> dict[int, tuple[int, float, int]]:
    n = len(batch)
    ids = {APPARENT, POWER, HOT}
    return {
        int(batch.tag_ids[i]): (int(batch.ts_ns[i]), float(batch.values[i]), int(batch.quality[i]))
        for i in range(n)
        if int(batch.tag_ids[i]) in ids
    }


def test_calculations_follow_their_latest_inputs() -> None:
    c = calcs()
    state = c.initial_state()
    b1 = PointBatch.from_values("m1", [1, 2], [400.0, 10.0], ts_ns=np.array([5 * S, 6 * S]))
    state, out = c.apply(state, b1)
    assert same_batch(out.select(np.arange(len(out)) < 2), b1)  # input points first, unchanged
    assert calc_points(out) == {APPARENT: (6 * S, 4.0, 0)}  # power waits for cos_phi
    state, out = c.apply(state, PointBatch.from_values("m1", [3], [0.5], ts_ns=7 * S))
    assert calc_points(out) == {POWER: (7 * S, 2.0, 0)}
    # current alone changes: both apparent and power follow, with the current's timestamp
    state, out = c.apply(state, PointBatch.from_values("m1", [2, 9], [20.0, 1.0], ts_ns=8 * S))
    assert calc_points(out) == {APPARENT: (8 * S, 8.0, 0), POWER: (8 * S, 4.0, 0)}
    # an uncertain input: worst quality wins; a bad input: NaN and the bad code
    state, out = c.apply(
        state, PointBatch.from_values("m1", [3], [0.25], ts_ns=9 * S, quality=Quality.CLAMPED)
    )
    assert calc_points(out) == {POWER: (9 * S, 2.0, int(Quality.CLAMPED))}
    state, out = c.apply(
        state, PointBatch.from_values("m1", [1], [0.0], ts_ns=10 * S, quality=Quality.COMM_ERROR)
    )
    got = calc_points(out)
    assert math.isnan(got[APPARENT][1]) and got[APPARENT][2] == Quality.COMM_ERROR
    assert math.isnan(got[POWER][1]) and got[POWER][2] == Quality.COMM_ERROR
    # a late point (older than the kept one) changes nothing
    state2, out = c.apply(state, PointBatch.from_values("m1", [2], [99.0], ts_ns=1 * S))
    assert len(out) == 1 and state2 is state
    # the newest point of a tag repeated in one batch wins
    state, out = c.apply(
        state,
        PointBatch.from_values("m1", [4, 4, 4], [90.0, 70.0, 85.0], ts_ns=np.array([11 * S, 13 * S, 12 * S])),
    )
    assert calc_points(out) == {HOT: (13 * S, 0.0, 0)}


def test_other_devices_and_unrelated_tags_pass_through_untouched() -> None:
    c = calcs()
    b = PointBatch.from_values("m2", [1, 2], [1.0, 2.0], ts_ns=S)
    state, out = c.apply(c.initial_state(), b)
    assert out is b
    b = PointBatch.from_values("m1", [7, 8], [1.0, 2.0], ts_ns=S)
    assert c.apply(state, b)[1] is b


def test_definitions_are_checked_when_built() -> None:
    with pytest.raises(ExpressionError, match="calculated tag 'p': unknown name 'curent' at column 11"):
        CalculatedTags("m", {"p": "voltage * curent"}, TAGS)
    with pytest.raises(ExpressionError, match="cycle: a -> b -> a"):
        CalculatedTags("m", {"a": "b + 1", "b": "a * 2"}, TAGS)
    with pytest.raises(ExpressionError, match="cycle: a -> a"):
        CalculatedTags("m", {"a": "a + voltage"}, TAGS)
    with pytest.raises(ExpressionError, match="name of an input tag"):
        CalculatedTags("m", {"voltage": "current"}, TAGS)
    # order of definition does not matter when there is no cycle
    c = CalculatedTags("m", {"b": "a * 2", "a": "voltage + 1"}, TAGS)
    _, out = c.apply(c.initial_state(), PointBatch.from_values("m", [1], [1.0], ts_ns=S))
    assert out.values.tolist() == [1.0, 2.0, 4.0]


# -- the operator contract ---------------------------------------------------------------------------


def scenario(seed: int) -> list[PointBatch]:
    rng = np.random.default_rng(seed)
    tag_sets = [[1, 2, 3, 4], [2], [1, 9], [], [4, 4, 1], [3, 2, 1], [9, 10]]
    out = []
    for step, tags in enumerate(tag_sets * 3):
        q = rng.choice(np.array([0, 0, 0, 65, 129], dtype=np.uint8), len(tags))
        v = np.round(rng.normal(100, 50, len(tags)), 2)
        out.append(PointBatch.from_values("m1", tags, v, ts_ns=step * S + np.arange(len(tags)), quality=q))
    return out


def run(
    core: CalculatedTags, batches: list[PointBatch], state: CalculatedState | None = None
) -> list[PointBatch]:
    state = state or core.initial_state()
    outs = []
    for b in batches:
        state, out = core.apply(state, b)
        outs.append(out)
    return outs


def test_contract_pickles_repeats_and_does_not_mutate() -> None:
    batches = scenario(7)
    ref = run(calcs(), [copy_of(b) for b in batches])
    frozen_batches = [frozen(copy_of(b)) for b in batches]
    core = pickle.loads(pickle.dumps(calcs()))
    got = run(core, frozen_batches)
    assert all(same_batch(x, y) for x, y in zip(ref, got, strict=True))
    assert all(same_batch(x, y) for x, y in zip(batches, frozen_batches, strict=True))
    assert all(same_batch(a, b) for a, b in zip(ref, run(calcs(), scenario(7)), strict=True))  # seeded repeat
    assert sum(len(o) - len(b) for o, b in zip(ref, batches, strict=True)) > 5  # it did calculate


def test_contract_state_pickles_mid_stream_and_is_not_modified() -> None:
    core = calcs()
    batches = scenario(3)
    state = core.initial_state()
    for b in batches[:5]:
        state, _ = core.apply(state, b)
    before = pickle.dumps(state)
    resumed = pickle.loads(before)
    first = run(core, batches[5:], state)
    again = run(core, batches[5:], resumed)
    assert all(same_batch(x, y) for x, y in zip(first, again, strict=True))
    assert pickle.dumps(state) == before  # apply() never modified the state it was given


def test_contract_defaults_are_immutable() -> None:
    core = calcs()
    with pytest.raises(TypeError):
        core.definitions["x"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        core.tag_names["x"] = 5  # type: ignore[index]
