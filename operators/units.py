"""Engineering units: every conversion is one affine map ``y = a*x + b``.

The table below gives each unit its dimension and its affine map *to* the dimension's SI base
unit (``si = factor*x + offset``). Factors are exact decimal fractions, so conversions that are
exact on paper come out exact in floating point:

>>> conversion("degC", "degF")
(1.8, 32.0)
>>> a, b = conversion("bar", "kPa"); a * 1 + b
100.0
>>> conversion("degC", "bar")
Traceback (most recent call last):
...
operators.units.UnitError: cannot convert 'degC' to 'bar': temperature vs pressure
>>> "psi" in known_units()
True

Unit names are case-sensitive (``mm`` is not ``Mm``); a few common spellings are aliases
(``°C`` for ``degC``, ``l/min`` and ``L/min``).
"""

from __future__ import annotations

import difflib
from fractions import Fraction

__all__ = ["UnitError", "conversion", "dimension_of", "known_units"]


class UnitError(ValueError):
    """A unit is unknown, or two units measure different things."""


def _f(x: str | int) -> Fraction:
    return Fraction(x)


_G = _f("9.80665")  # standard gravity, m/s²
_LB = _f("0.45359237")  # kg
_IN = _f("0.0254")  # m
_FT = _f("0.3048")  # m
_US_GAL = _f("0.003785411784")  # m³
_BTU = _f("1055.05585262")  # J (International Table)

_ZERO = Fraction(0)

# unit -> (dimension, factor, offset): value in the SI base unit = factor * x + offset
_TABLE: dict[str, tuple[str, Fraction, Fraction]] = {}


def _add(dimension: str, units: dict[str, Fraction | tuple[Fraction, Fraction]]) -> None:
    for name, spec in units.items():
        factor, offset = spec if isinstance(spec, tuple) else (spec, _ZERO)
        _TABLE[name] = (dimension, factor, offset)


_add(
    "temperature",  # base: K
    {
        "K": _f(1),
        "degC": (_f(1), _f("273.15")),
        "°C": (_f(1), _f("273.15")),
        "degF": (_f(5) / 9, _f("273.15") - _f(32) * 5 / 9),
        "°F": (_f(5) / 9, _f("273.15") - _f(32) * 5 / 9),
        "degR": _f(5) / 9,
    },
)
_add(
    "pressure",  # base: Pa
    {
        "Pa": _f(1),
        "hPa": _f(100),
        "kPa": _f(1000),
        "MPa": _f(1_000_000),
        "mbar": _f(100),
        "bar": _f(100_000),
        "psi": _LB * _G / (_IN * _IN),
        "atm": _f(101_325),
        "mmHg": _f("133.322387415"),
        "inHg": _f("3386.389"),
        "mmH2O": _f("9.80665"),
    },
)
_add(
    "length",  # base: m
    {
        "m": _f(1),
        "km": _f(1000),
        "cm": _f("0.01"),
        "mm": _f("0.001"),
        "um": _f("0.000001"),
        "µm": _f("0.000001"),
        "in": _IN,
        "ft": _FT,
        "yd": _FT * 3,
        "mi": _f("1609.344"),
    },
)
_add(
    "volume",  # base: m³
    {
        "m3": _f(1),
        "l": _f("0.001"),
        "L": _f("0.001"),
        "ml": _f("0.000001"),
        "gal": _US_GAL,
        "ft3": _FT**3,
    },
)
_add(
    "volume flow",  # base: m³/s
    {
        "m3/s": _f(1),
        "m3/min": _f(1) / 60,
        "m3/h": _f(1) / 3600,
        "l/s": _f("0.001"),
        "L/s": _f("0.001"),
        "l/min": _f("0.001") / 60,
        "L/min": _f("0.001") / 60,
        "l/h": _f("0.001") / 3600,
        "L/h": _f("0.001") / 3600,
        "gpm": _US_GAL / 60,
        "cfm": _FT**3 / 60,
    },
)
_add(
    "mass",  # base: kg
    {"kg": _f(1), "g": _f("0.001"), "t": _f(1000), "lb": _LB},
)
_add(
    "mass flow",  # base: kg/s
    {"kg/s": _f(1), "kg/min": _f(1) / 60, "kg/h": _f(1) / 3600, "t/h": _f(1000) / 3600, "lb/h": _LB / 3600},
)
_add(
    "power",  # base: W
    {
        "W": _f(1),
        "kW": _f(1000),
        "MW": _f(1_000_000),
        "hp": 550 * _FT * _LB * _G,  # mechanical horsepower
        "BTU/h": _BTU / 3600,
    },
)
_add(
    "energy",  # base: J
    {
        "J": _f(1),
        "kJ": _f(1000),
        "MJ": _f(1_000_000),
        "Wh": _f(3600),
        "kWh": _f(3_600_000),
        "MWh": _f(3_600_000_000),
        "BTU": _BTU,
    },
)
_add(
    "speed",  # base: m/s
    {
        "m/s": _f(1),
        "m/min": _f(1) / 60,
        "mm/s": _f("0.001"),
        "km/h": _f(1000) / 3600,
        "ft/min": _FT / 60,
        "ft/s": _FT,
    },
)
_add(
    "rotational speed",  # base: Hz (revolutions per second)
    {"Hz": _f(1), "kHz": _f(1000), "rps": _f(1), "rpm": _f(1) / 60},
)
_add(
    "time",  # base: s
    {"s": _f(1), "ms": _f("0.001"), "min": _f(60), "h": _f(3600), "d": _f(86_400)},
)
_add("electric current", {"A": _f(1), "mA": _f("0.001"), "kA": _f(1000)})
_add("voltage", {"V": _f(1), "mV": _f("0.001"), "kV": _f(1000)})
_add("ratio", {"1": _f(1), "%": _f("0.01"), "ppm": _f("0.000001")})


def _lookup(unit: str, from_unit: str, to_unit: str) -> tuple[str, Fraction, Fraction]:
    try:
        return _TABLE[unit]
    except KeyError:
        close = difflib.get_close_matches(unit, _TABLE, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}: unknown unit {unit!r}{hint}") from None


def conversion(from_unit: str, to_unit: str) -> tuple[float, float]:
    """The ``(a, b)`` with ``value_in_to_unit = a * value_in_from_unit + b``.

    Raises :class:`UnitError` naming both units when one is unknown or their dimensions differ.

    >>> conversion("psi", "psi")
    (1.0, 0.0)
    >>> a, b = conversion("K", "degC"); round(a * 0 + b, 2)
    -273.15
    >>> conversion("degC", "kpa")
    Traceback (most recent call last):
    ...
    operators.units.UnitError: cannot convert 'degC' to 'kpa': unknown unit 'kpa' (did you mean 'kPa'?)
    """
    dim_from, f_from, o_from = _lookup(from_unit, from_unit, to_unit)
    dim_to, f_to, o_to = _lookup(to_unit, from_unit, to_unit)
    if dim_from != dim_to:
        raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}: {dim_from} vs {dim_to}")
    # si = f_from*x + o_from ; y = (si - o_to) / f_to
    return float(f_from / f_to), float((o_from - o_to) / f_to)


def dimension_of(unit: str) -> str:
    """The dimension a unit measures (``'temperature'``, ``'pressure'``, ...).

    >>> dimension_of("gpm")
    'volume flow'
    """
    try:
        return _TABLE[unit][0]
    except KeyError:
        raise UnitError(f"unknown unit {unit!r}") from None


def known_units() -> tuple[str, ...]:
    """Every unit name :func:`conversion` accepts, sorted."""
    return tuple(sorted(_TABLE))
