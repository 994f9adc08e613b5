"""Physical units: the unit names of OME-NGFF (UDUNITS-2 names) and their symbols, for display.

OME-Zarr declares an axis unit as a UDUNITS-2 name (``"micrometer"``,
``"nanometer"``, ``"second"`` ...). lazystack keeps that name (it is the
``units`` attribute of the xarray coordinates, a name pint and UDUNITS
understand) and shows it with its symbol: ``0.0906 µm``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["UNIT_SYMBOLS", "format_quantity", "format_sizes", "unit_name", "unit_symbol"]

#: SI prefixes NGFF allows on ``meter`` and ``second`` (all but deca), with their symbols.
_PREFIXES = {"yocto": "y", "zepto": "z", "atto": "a", "femto": "f", "pico": "p", "nano": "n", "micro": "µ"}
_PREFIXES |= {"milli": "m", "centi": "c", "deci": "d", "": "", "hecto": "h", "kilo": "k", "mega": "M"}
_PREFIXES |= {"giga": "G", "tera": "T", "peta": "P", "exa": "E", "zetta": "Z", "yotta": "Y"}
#: Symbol of each unit name OME-NGFF allows for space and time axes (and a few common aliases).
UNIT_SYMBOLS: dict[str, str] = {
    **{p + name: s + symbol for name, symbol in (("meter", "m"), ("second", "s")) for p, s in _PREFIXES.items()},
    **{"angstrom": "Å", "foot": "ft", "inch": "in", "micron": "µm", "mile": "mi", "parsec": "pc", "yard": "yd"},
    **{"day": "d", "hour": "h", "minute": "min"},
}


_ALIASES = {
    "um": "micrometer",
    "\u03bcm": "micrometer",  # Greek mu (OME-XML and ImageJ write either mu)
    "microns": "micrometer",
    "\\u00b5m": "micrometer",  # ImageJ's escaped micro sign
    "a": "angstrom",
    "sec": "second",
    "\u03bcs": "microsecond",
    "us": "microsecond",
}


def unit_name(unit: str | None) -> str | None:
    """The OME-NGFF (UDUNITS-2) name of a unit given by name or symbol, None when unknown.

    Accepts what OME-XML (``PhysicalSizeXUnit="µm"``), ImageJ (``unit=micron``)
    and NGFF (``"micrometer"``) write.

    Examples
    --------
    >>> unit_name("µm"), unit_name("micron"), unit_name("nm"), unit_name("Micrometer"), unit_name("pixel")
    ('micrometer', 'micrometer', 'nanometer', 'micrometer', None)
    """
    if not unit:
        return None
    text = str(unit).strip()
    if text.lower() in UNIT_SYMBOLS:
        return "micrometer" if text.lower() == "micron" else text.lower()
    for name, symbol in UNIT_SYMBOLS.items():
        if text == symbol and name != "micron":
            return name
    return _ALIASES.get(text.lower())


def unit_symbol(unit: str | None) -> str:
    """The symbol of a unit name (``"micrometer"`` -> ``"µm"``); other strings as given, None as ``""``.

    Examples
    --------
    >>> unit_symbol("micrometer"), unit_symbol("Nanometer"), unit_symbol("pixel"), unit_symbol(None)
    ('µm', 'nm', 'pixel', '')
    """
    if not unit:
        return ""
    return UNIT_SYMBOLS.get(unit.strip().lower(), unit.strip())


def format_quantity(value: float, unit: str | None = None) -> str:
    """A value with 4 significant digits and its unit's symbol.

    Examples
    --------
    >>> format_quantity(0.09057667415221031, "micrometer"), format_quantity(2.0)
    ('0.09058 µm', '2')
    """
    symbol = unit_symbol(unit)
    return f"{value:.4g}" + (f" {symbol}" if symbol else "")


def format_sizes(sizes: Mapping[str, float], units: Mapping[str, str] | None = None, sep: str = " ") -> str:
    """Pixel sizes per axis as text, in ``T Z Y X`` order (``"Y 0.0906 µm, X 0.0906 µm"``).

    Parameters
    ----------
    sizes : mapping
        Axis letter to size.
    units : mapping, optional
        Axis letter to unit name.
    sep : str
        Between the axis letter and the value (``"="`` in tables).

    Returns
    -------
    str
        ``""`` when ``sizes`` is empty.

    Examples
    --------
    >>> format_sizes({"X": 0.25, "Y": 0.5}, {"X": "micrometer", "Y": "micrometer"})
    'Y 0.5 µm, X 0.25 µm'
    """
    units = units or {}
    order = sorted(sizes, key=lambda a: ("TZYX".find(a), a))
    return ", ".join(f"{a}{sep}{format_quantity(float(sizes[a]), units.get(a))}" for a in order)
