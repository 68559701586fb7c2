"""What a guardrail costs a runtime call: Converse, ConverseStream (sync and async) and InvokeModel with and without
``guardrailConfig``, and ApplyGuardrail on its own, on a fake-engine server (so the figures are the guardrail's and
the server's, not a model's).

The guardrail has a word filter, EMAIL anonymization and a regex; the fake engine answers ~600 characters with no
match, so every check runs and nothing intervenes (the common case). Calls alternate with and without the guardrail
so that machine load hits both alike; medians and p90 over ``--calls`` calls each.

Usage: python bench/guardrail_runtime.py [--calls 50]
Prints a table and one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import start_server, stop_server

REPLY = " ".join(["The committee met on Tuesday and agreed the plan for the coming quarter."] * 8)
CONFIG = f"""
[[deployments]]
name = "fake"
engine = "fake"
models = ["*"]
fake_reply = {json.dumps(REPLY)}
"""
MODEL = "meta.llama3-1-8b-instruct-v1:0"
TEXT_1000 = ("Please summarise the minutes of the meeting held last week about the budget, the hiring plan and the "
             "office move; list the decisions and who owns each. ") * 7


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered), 2), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2)}


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), config=CONFIG)
        try:
            control, runtime = server.client("bedrock"), server.client()
            made = control.create_guardrail(
                name="bench", blockedInputMessaging="blocked", blockedOutputsMessaging="blocked",
                wordPolicyConfig={"wordsConfig": [{"text": "kumquat"}]},
                sensitiveInformationPolicyConfig={
                    "piiEntitiesConfig": [{"type": "EMAIL", "action": "ANONYMIZE"}],
                    "regexesConfig": [{"name": "ticket", "pattern": "TKT-[0-9]{4}", "action": "BLOCK"}]})
            guard = {"guardrailIdentifier": made["guardrailId"], "guardrailVersion": "DRAFT"}
            messages = [{"role": "user", "content": [{"text": TEXT_1000}]}]
            body = json.dumps({"prompt": TEXT_1000})

            def converse(with_guard: bool) -> None:
                runtime.converse(modelId=MODEL, messages=messages, **({"guardrailConfig": guard} if with_guard else {}))

            def stream(mode: str | None) -> None:
                extra = {"guardrailConfig": {**guard, "streamProcessingMode": mode}} if mode else {}
                for _ in runtime.converse_stream(modelId=MODEL, messages=messages, **extra)["stream"]:
                    pass

            def invoke(with_guard: bool) -> None:
                headers = {"guardrailIdentifier": guard["guardrailIdentifier"], "guardrailVersion": "DRAFT"}
                runtime.invoke_model(modelId=MODEL, body=body, **(headers if with_guard else {}))["body"].read()

            def apply() -> None:
                runtime.apply_guardrail(**guard, source="INPUT", content=[{"text": {"text": TEXT_1000}}])

            cases: dict[str, Any] = {
                "Converse": lambda: converse(False), "Converse + guardrail": lambda: converse(True),
                "ConverseStream": lambda: stream(None), "ConverseStream + guardrail sync": lambda: stream("sync"),
                "ConverseStream + guardrail async": lambda: stream("async"),
                "InvokeModel": lambda: invoke(False), "InvokeModel + guardrail": lambda: invoke(True),
                "ApplyGuardrail (1,000 chars)": apply,
            }
            for case in cases.values():  # warm up
                case()
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.calls):
                for name, case in cases.items():
                    samples[name].append(timed(case))
        finally:
            stop_server(server)
    results = {name: quantiles(values) for name, values in samples.items()}
    # The guardrail's cost: the median over rounds of (with - without), each pair measured back to back.
    pairs = {"Converse + guardrail": "Converse", "ConverseStream + guardrail sync": "ConverseStream",
             "ConverseStream + guardrail async": "ConverseStream", "InvokeModel + guardrail": "InvokeModel"}
    for guarded, plain in pairs.items():
        differences = [a - b for a, b in zip(samples[guarded], samples[plain], strict=True)]
        results[guarded]["paired_overhead_p50"] = round(statistics.median(differences), 2)
    print(f"{'case':36} {'p50 ms':>8} {'p90 ms':>8} {'paired overhead p50 ms':>24}")
    for name, figures in results.items():
        overhead = figures.get("paired_overhead_p50")
        print(f"{name:36} {figures['p50']:8.1f} {figures['p90']:8.1f} "
              f"{'' if overhead is None else f'{overhead:24.1f}'}")
    print(json.dumps({"calls": args.calls, "reply_chars": len(REPLY), "input_chars": len(TEXT_1000),
                      "results": results}))


if __name__ == "__main__":
    main()
