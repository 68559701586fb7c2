"""What an invocation or a provisioned model costs, in exact decimal US dollars.

Prices come from the catalog (the spec's on-demand table, per one million tokens; the provisioned hourly price per
model unit) unless the settings' ``prices`` table names the model, which wins. A model with no price anywhere is
*unpriced*: its cost is ``None``, never a made-up zero, so that reports can say so.

All arithmetic is ``Decimal``: catalog floats are read through ``str`` (``0.75`` is exactly ``Decimal("0.75")``),
so the spec's worked example — 2,000 input and 500 output tokens on Llama 2 Chat 13B — is exactly ``0.002``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from llamarock.bedrock import catalog
from llamarock.settings import PriceSettings

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    """On-demand prices of one model in USD per one million tokens."""

    input_per_million: Decimal
    output_per_million: Decimal


def _decimal(value: float | int | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def rates(model_id: str, prices: Mapping[str, PriceSettings] | None = None) -> Rates | None:
    """The on-demand rates of a catalog base model id: the configured ones, else the catalog's, else None."""
    configured = (prices or {}).get(model_id)
    if configured is not None:
        return Rates(configured.input, configured.output)
    model = catalog.get(model_id)
    if model is None or model.on_demand_price is None:
        return None
    return Rates(_decimal(model.on_demand_price.input_per_million), _decimal(model.on_demand_price.output_per_million))


def token_cost(
    model_rates: Rates | None,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_read_fraction: Decimal = Decimal(0),
    tier_multiplier: Decimal = Decimal(1),
) -> Decimal | None:
    """``input × input price + output × output price`` per 1M tokens, plus cache reads at ``cache_read_fraction``
    of the input price, all times the service tier's ``tier_multiplier`` (setting ``tier_price_multipliers``: flex
    0.5, priority 1.75 by default, as Bedrock prices its tiers); None for an unpriced model.

    ``input_tokens`` are the prompt tokens computed for the request, as the response reports them; prefix-cache
    reads are counted apart (``cacheReadInputTokens``), like Bedrock's prompt caching, which bills them at a
    discount. The fraction is a setting (``cache_read_price_fraction``) because Bedrock has no cache-read price for
    Llama models to copy.
    """
    if model_rates is None:
        return None
    total = (
        input_tokens * model_rates.input_per_million
        + output_tokens * model_rates.output_per_million
        + cache_read_tokens * model_rates.input_per_million * cache_read_fraction
    )
    return total * tier_multiplier / MILLION


def hourly_rate(model_id: str, prices: Mapping[str, PriceSettings] | None = None) -> Decimal | None:
    """Provisioned Throughput price in USD per model unit per hour: configured, else the catalog's, else None."""
    configured = (prices or {}).get(model_id)
    if configured is not None and configured.provisioned_hourly is not None:
        return configured.provisioned_hourly
    model = catalog.get(model_id)
    if model is None or model.provisioned_hourly_usd is None:
        return None
    return _decimal(model.provisioned_hourly_usd)


def provisioned_cost(
    model_id: str, units: int, hours: float | int | Decimal, prices: Mapping[str, PriceSettings] | None = None
) -> Decimal | None:
    """Hourly price × model units × hours for a provisioned model; None when the model has no hourly price."""
    rate = hourly_rate(model_id, prices)
    if rate is None:
        return None
    return rate * units * _decimal(hours)
