"""Pricing (the spec's prices, exactly), the usage store and its report, over the real SQLite database, the CLI and
the HTTP route."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from llamarock.app import create_app
from llamarock.bedrock import catalog, pricing
from llamarock.cli import main
from llamarock.observability.records import InvocationRecord
from llamarock.observability.usage import UsageRecorder, UsageStore, parse_since
from llamarock.settings import load_settings
from llamarock.storage.db import Database

# The spec's on-demand table (US West - Oregon), USD per 1M input / output tokens.
SPEC_PRICES = {
    "meta.llama3-1-405b-instruct-v1:0": ("5.32", "16.00"),
    "meta.llama3-1-70b-instruct-v1:0": ("0.99", "2.99"),
    "meta.llama3-1-8b-instruct-v1:0": ("0.22", "0.22"),
    "meta.llama2-13b-chat-v1": ("0.75", "1.00"),
}
# Llama 4, which the spec does not price: AWS's published on-demand prices (the catalog says so).
AWS_PRICES = {
    "meta.llama4-scout-17b-instruct-v1:0": ("0.17", "0.66"),
    "meta.llama4-maverick-17b-instruct-v1:0": ("0.24", "0.97"),
    # The embedding models: input tokens only.
    "amazon.titan-embed-text-v2:0": ("0.02", "0"),
    "amazon.titan-embed-text-v1": ("0.1", "0"),
    "cohere.embed-english-v3": ("0.1", "0"),
    "cohere.embed-multilingual-v3": ("0.1", "0"),
}
PRICED = "meta.llama2-13b-chat-v1"
UNPRICED = "meta.llama3-8b-instruct-v1:0"


def test_the_spec_example_costs_exactly_two_tenths_of_a_cent() -> None:
    cost = pricing.token_cost(pricing.rates(PRICED), input_tokens=2000, output_tokens=500)
    assert cost == Decimal("0.002")
    assert str(cost.normalize()) == "0.002"


@pytest.mark.parametrize("model_id", sorted(SPEC_PRICES | AWS_PRICES))
def test_costs_are_tokens_times_the_spec_prices(model_id: str) -> None:
    price_in, price_out = (Decimal(p) for p in (SPEC_PRICES | AWS_PRICES)[model_id])
    for input_tokens, output_tokens in [(1, 0), (0, 1), (1234, 567), (1_000_000, 3_000_000)]:
        expected = (input_tokens * price_in + output_tokens * price_out) / 1_000_000
        assert pricing.token_cost(pricing.rates(model_id), input_tokens, output_tokens) == expected


def test_models_the_spec_does_not_price_are_unpriced_unless_configured(tmp_path: Path) -> None:
    unpriced = [m.model_id for m in catalog.MODELS if m.model_id not in SPEC_PRICES | AWS_PRICES]
    assert unpriced and all(pricing.rates(m) is None for m in unpriced)
    assert pricing.token_cost(pricing.rates(UNPRICED), 10, 10) is None
    config = tmp_path / "config.toml"
    config.write_text(f'[prices."{UNPRICED}"]\ninput = 0.30\noutput = 0.60\n\n'
                      f'[prices."{PRICED}"]\ninput = 1\noutput = 2\nprovisioned_hourly = 10.5\n')
    settings = load_settings(config)
    assert pricing.token_cost(pricing.rates(UNPRICED, settings.prices), 1000, 2000) == Decimal("0.0015")
    # A configured price replaces the catalog's.
    assert pricing.token_cost(pricing.rates(PRICED, settings.prices), 2000, 500) == Decimal("0.003")
    assert pricing.provisioned_cost(PRICED, 2, 3, settings.prices) == Decimal("63.0")


def test_cache_reads_cost_a_configurable_share_of_the_input_price() -> None:
    rates = pricing.rates(PRICED)
    assert pricing.token_cost(rates, 1000, 0, cache_read_tokens=4000) == Decimal("0.00075")
    assert pricing.token_cost(rates, 1000, 0, 4000, Decimal("0.1")) == Decimal("0.00075") + Decimal("0.0003")
    assert pricing.token_cost(rates, 1000, 0, 4000, Decimal(1)) == Decimal("0.00375")


def test_provisioned_cost_is_hourly_price_times_units_times_hours() -> None:
    assert pricing.provisioned_cost(PRICED, units=2, hours=3) == Decimal("21.18") * 6
    assert pricing.provisioned_cost(PRICED, units=1, hours=0.5) == Decimal("10.59")
    assert pricing.provisioned_cost(UNPRICED, units=1, hours=1) is None


def _record(index: int, **fields: object) -> InvocationRecord:
    base: dict[str, object] = dict(
        request_id=f"req-{index}", operation="InvokeModel", model_identifier=PRICED, model_id=PRICED,
        principal_arn="arn:aws:iam::000000000000:user/alice", region="us-west-2", deployment="d",
        input_tokens=100 + index, output_tokens=10 + index, latency_ms=50,
    )
    base.update(fields)
    return InvocationRecord(**base)  # type: ignore[arg-type]


def _mix() -> list[InvocationRecord]:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    bob = "arn:aws:iam::000000000000:user/bob"
    return [
        _record(1, request_metadata={"team": "search"}),
        _record(2, request_metadata={"team": "search", "env": "prod"}, cache_read_tokens=64),
        _record(3, principal_arn=bob, model_identifier=UNPRICED, model_id=UNPRICED, operation="Converse",
                request_metadata={"team": "ads"}),
        _record(4, principal_arn=bob, started_at=yesterday, operation="ConverseStream", ttft_ms=12),
        _record(5, status=400, error_code="ValidationException", input_tokens=0, output_tokens=0),
        _record(6, status=429, error_code="ThrottlingException", input_tokens=0, output_tokens=0),
        _record(7, status=500, error_code="InternalServerException", input_tokens=3, output_tokens=0),
        # rejected before the route resolved the model: the identifier still names the catalog model
        _record(8, model_id=None, model_identifier=f"us.{UNPRICED}", status=400, error_code="ValidationException",
                input_tokens=0, output_tokens=0),
        _record(9, cancelled=True, status=200, output_tokens=4),
        # through a provisioned model: its hours are billed, not its tokens
        _record(10, provisioned_model_arn="arn:aws:bedrock:us-west-2:000000000000:provisioned-model/abc"),
    ]


def _expected(records: list[InvocationRecord], key: object) -> dict[str, dict[str, object]]:
    """The report computed independently from the records: ``key(record)`` gives the groups of a record."""
    out: dict[str, dict[str, object]] = {}
    for r in records:
        for group in key(r):  # type: ignore[operator]
            row = out.setdefault(group, {"invocations": 0, "inputTokens": 0, "outputTokens": 0,
                                         "cacheReadInputTokens": 0, "cost": Decimal(0), "unpriced": 0})
            counted = r.error_code not in ("ValidationException", "ThrottlingException")
            row["invocations"] += int(counted)  # type: ignore[operator]
            row["inputTokens"] += r.input_tokens  # type: ignore[operator]
            row["outputTokens"] += r.output_tokens  # type: ignore[operator]
            row["cacheReadInputTokens"] += r.cache_read_tokens  # type: ignore[operator]
            prices = SPEC_PRICES.get(r.model_id or UNPRICED)
            if r.provisioned_model_arn:
                continue
            if prices is None:
                row["unpriced"] += int(counted)  # type: ignore[operator]
            else:
                cost = (r.input_tokens * Decimal(prices[0]) + r.output_tokens * Decimal(prices[1])) / 10**6
                row["cost"] += cost  # type: ignore[operator]
    return out


def _compare(rows: list[dict[str, object]], key_name: str, expected: dict[str, dict[str, object]]) -> None:
    assert [row[key_name] for row in rows] == sorted(expected)
    for row in rows:
        want = expected[str(row[key_name])]
        for name in ("invocations", "inputTokens", "outputTokens", "cacheReadInputTokens"):
            assert row[name] == want[name], (row, name)
        assert row["unpricedInvocations"] == want["unpriced"]
        if want["cost"] == 0 and want["unpriced"]:
            assert row["costUsd"] is None or Decimal(str(row["costUsd"])) == 0
        else:
            assert Decimal(str(row["costUsd"])) == want["cost"], row


def test_recorder_stores_every_record_and_the_report_groups_them(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    recorder = UsageRecorder(settings, UsageStore(Database.at(tmp_path)))
    records = _mix()
    for record in records:
        recorder.record(record)
    assert recorder.flush(timeout=30)
    store = recorder.store
    day = lambda r: [r.started_at.astimezone(UTC).date().isoformat()]  # noqa: E731
    cases = {
        "model": lambda r: [r.model_id or UNPRICED],
        "principal": lambda r: [r.principal_arn],
        "tag": lambda r: [f"{k}={v}" for k, v in r.request_metadata.items()],
        "day": day,
    }
    for by, key in cases.items():
        rows = [row.to_json(by) for row in store.report(by)]  # type: ignore[arg-type]
        _compare(rows, {"model": "modelId"}.get(by, by), _expected(records, key))
    today = datetime.now(UTC).date().isoformat()
    recent = [r for r in records if day(r) == [today]]
    rows = [row.to_json("model") for row in store.report("model", parse_since(today))]
    _compare(rows, "modelId", _expected(recent, cases["model"]))
    by_model = {row.key: row for row in store.report("model")}
    assert by_model[PRICED].client_errors == 1 and by_model[PRICED].server_errors == 1
    assert by_model[PRICED].throttles == 1 and by_model[UNPRICED].client_errors == 1
    recorder.close()


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    recorder = UsageRecorder(settings, UsageStore(Database.at(tmp_path)))
    for index in range(500):
        recorder.record(_record(index))
    recorder.close()
    recorder.record(_record(1000))  # after close: written at once, not lost
    store = UsageStore(Database.at(tmp_path))
    (row,) = store.report("model")
    assert row.invocations == 501
    assert row.input_tokens == sum(100 + i for i in [*range(500), 1000])
    store.db.close()


def test_cli_report_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorder = UsageRecorder(load_settings(data_dir=tmp_path), UsageStore(Database.at(tmp_path)))
    records = _mix()
    for record in records:
        recorder.record(record)
    recorder.close()
    assert main(["usage", "--data-dir", str(tmp_path), "--json", "--by", "tag"]) == 0
    rows = json.loads(capsys.readouterr().out)
    _compare(rows, "tag", _expected(records, lambda r: [f"{k}={v}" for k, v in r.request_metadata.items()]))
    assert main(["usage", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["MODEL", "ID", "INVOCATIONS"]
    assert "unpriced" in table and PRICED in table and "[prices." in table
    assert main(["usage", "--data-dir", str(tmp_path), "--since", "last tuesday"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_usage_over_http(tmp_path: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(data_dir=tmp_path, engine="fake"))
        records = _mix()
        for record in records:
            app.state.observers.emit(record)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.get("/llamarock/usage", params={"by": "principal"})
            assert answer.status_code == 200
            body = answer.json()
            assert body["by"] == "principal" and body["since"] is None
            _compare(body["rows"], "principal", _expected(records, lambda r: [r.principal_arn]))
            tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
            assert (await client.get("/llamarock/usage", params={"since": tomorrow})).json()["rows"] == []
            for params in ({"by": "colour"}, {"since": "soon"}, {"until": "2025-01-01"}):
                bad = await client.get("/llamarock/usage", params=params)
                assert bad.status_code == 400
                assert bad.headers["x-amzn-ErrorType"].startswith("ValidationException")
                assert "use" in bad.json()["message"]
        app.state.usage.close()

    asyncio.run(run())
