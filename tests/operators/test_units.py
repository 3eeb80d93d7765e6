"""Unit conversion table: known values, exactness, errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.units import UnitError, conversion, dimension_of, known_units


def convert(x: float, from_unit: str, to_unit: str) -> float:
    a, b = conversion(from_unit, to_unit)
    return a * x + b


@pytest.mark.parametrize(
    ("x", "from_unit", "to_unit", "expected"),
    [
        (100.0, "degC", "degF", 212.0),
        (32.0, "degF", "degC", 0.0),
        (0.0, "degC", "K", 273.15),
        (212.0, "degF", "K", 373.15),
        (1.0, "bar", "kPa", 100.0),
        (1.0, "bar", "mbar", 1000.0),
        (1.0, "psi", "Pa", 6894.757293168361),
        (1.0, "atm", "bar", 1.01325),
        (1.0, "in", "mm", 25.4),
        (1.0, "ft", "in", 12.0),
        (1.0, "m3/h", "l/min", 1000 / 60),
        (1.0, "gpm", "l/min", 3.785411784),
        (1.0, "hp", "W", 745.6998715822702),
        (1.5, "kW", "W", 1500.0),
        (1.0, "kWh", "J", 3.6e6),
        (1.0, "Wh", "kJ", 3.6),
        (60.0, "rpm", "Hz", 1.0),
        (120.0, "m/min", "m/s", 2.0),
    ],
)
def test_known_conversions(x: float, from_unit: str, to_unit: str, expected: float) -> None:
    assert convert(x, from_unit, to_unit) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_exact_where_exact_on_paper() -> None:
    assert conversion("degC", "degF") == (1.8, 32.0)
    assert convert(100.0, "degC", "degF") == 212.0
    assert conversion("bar", "kPa") == (100.0, 0.0)
    assert conversion("mm", "mm") == (1.0, 0.0)


def test_dimension_mismatch_names_both_units_and_dimensions() -> None:
    with pytest.raises(UnitError, match=r"cannot convert 'degC' to 'bar': temperature vs pressure"):
        conversion("degC", "bar")


@pytest.mark.parametrize(("a", "b", "bad"), [("furlong", "m", "furlong"), ("m", "parsec", "parsec")])
def test_unknown_unit_names_both_units(a: str, b: str, bad: str) -> None:
    with pytest.raises(UnitError) as info:
        conversion(a, b)
    msg = str(info.value)
    assert repr(a) in msg and repr(b) in msg and f"unknown unit {bad!r}" in msg
    assert isinstance(info.value, ValueError)


def test_units_are_case_sensitive_and_hint_the_near_miss() -> None:
    with pytest.raises(UnitError, match="did you mean 'kPa'"):
        conversion("kpa", "bar")


def test_known_units_and_dimensions() -> None:
    units = known_units()
    assert list(units) == sorted(units)
    for u in ("degC", "degF", "K", "Pa", "kPa", "bar", "mbar", "psi", "m", "mm", "in", "ft"):
        assert u in units
    for u in ("l/min", "m3/h", "gpm", "W", "kW", "hp", "Wh", "kWh", "J", "rpm"):
        assert u in units
    assert dimension_of("degF") == "temperature"
    with pytest.raises(UnitError):
        dimension_of("nope")


same_dimension_pairs = st.sampled_from(known_units()).flatmap(
    lambda u: st.tuples(
        st.just(u), st.sampled_from([v for v in known_units() if dimension_of(v) == dimension_of(u)])
    )
)


@given(same_dimension_pairs, st.floats(-1e6, 1e6))
def test_round_trip(pair: tuple[str, str], x: float) -> None:
    a, b = pair
    back = convert(convert(x, a, b), b, a)
    assert math.isclose(back, x, rel_tol=1e-9, abs_tol=1e-6)


@given(same_dimension_pairs, same_dimension_pairs)
def test_composition_is_consistent(p: tuple[str, str], q: tuple[str, str]) -> None:
    # from p[0] via p[1] to q[1], when all are one dimension, equals the direct conversion
    if dimension_of(p[0]) != dimension_of(q[1]):
        with pytest.raises(UnitError):
            conversion(p[0], q[1])
        return
    x = 12.5
    via = convert(convert(x, p[0], p[1]), p[1], q[1])
    assert math.isclose(via, convert(x, p[0], q[1]), rel_tol=1e-9, abs_tol=1e-6)
