"""What a model turn cost: a small price table in USD per 1M tokens.

The built-in prices are list prices for a few well-known OpenAI models at the time of writing;
they change, so treat them as defaults. Set the ``prices`` setting (``FLEET_PRICES``) to a JSON
file to add or override entries::

    {"my-model": {"input": 0.5, "cached_input": 0.05, "output": 1.5}}

``cached_input`` may be left out (cached tokens then cost the ``input`` price). Unknown models
cost 0, so a local or scripted model never shows a made-up figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.settings import FleetSettings
from harness.models.base import Usage

PRICES_ENV = "FLEET_PRICES"


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input: float
    cached_input: float
    output: float


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "o3": Price(2.00, 0.50, 8.00),
    "o4-mini": Price(1.10, 0.275, 4.40),
}

_cache: dict[tuple[str, int], dict[str, Price]] = {}


def _read_overrides(path: str) -> dict[str, Price]:
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError("the top level must be an object of model name -> prices")
        prices = {}
        for name, entry in raw.items():
            input_price = float(entry["input"])
            cached = float(entry.get("cached_input", input_price))
            prices[str(name)] = Price(input_price, cached, float(entry["output"]))
        return prices
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"bad price file {path} (from ${PRICES_ENV}): {exc!r}") from exc


def load_prices(settings: FleetSettings | None = None) -> dict[str, Price]:
    """The built-in table with the ``prices`` file of ``settings`` (default: this process's
    environment, ``FleetSettings()``), if any, laid over it.

    Raises ValueError for an unreadable or malformed file: a wrong bill is worse than none.
    """
    path = (settings or FleetSettings()).prices
    if not path:
        return dict(DEFAULT_PRICES)
    try:
        key = (path, Path(path).stat().st_mtime_ns)
    except OSError as exc:
        raise ValueError(f"bad price file {path} (from ${PRICES_ENV}): {exc!r}") from exc
    if key not in _cache:
        _cache[key] = {**DEFAULT_PRICES, **_read_overrides(path)}
    return _cache[key]


def price_for(model: str, prices: dict[str, Price] | None = None) -> Price | None:
    """The price of ``model``: an exact name, else a dated snapshot of a known name.

    ``gpt-4o-2024-08-06`` costs what ``gpt-4o`` costs; a gateway prefix such as ``openai/`` is
    ignored. ``gpt-4o-audio-preview`` is *not* priced as ``gpt-4o``.
    """
    table = load_prices() if prices is None else prices
    for name in (model, model.rsplit("/", 1)[-1]):
        if name in table:
            return table[name]
        snapshots = [
            known
            for known in table
            if name.startswith(known + "-") and name[len(known) + 1 : len(known) + 2].isdigit()
        ]
        if snapshots:
            return table[max(snapshots, key=len)]
    return None


def cost_usd(model: str, usage: Usage, settings: FleetSettings | None = None) -> float:
    """USD for one turn; cached input tokens are part of ``usage.input_tokens``."""
    price = price_for(model, load_prices(settings))
    if price is None:
        return 0.0
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    uncached = usage.input_tokens - cached
    total = (
        uncached * price.input + cached * price.cached_input + usage.output_tokens * price.output
    )
    return total / 1_000_000
