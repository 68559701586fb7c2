"""The spec's boto3 code samples ("API Usage with boto3" and "Batch Processing Example"), run verbatim.

Each sample runs in its own interpreter against the real-model server. The only things added to a clean environment
are ``AWS_ENDPOINT_URL`` (boto3 picks the endpoint up from it, so the sample code stays untouched) and dummy
credentials; local AWS config and credential files are masked so nothing from the developer's profile leaks in.

The code is extracted from the product spec at test time (so the tests follow the spec byte for byte); when the spec
is not next to the checkout, embedded verbatim copies are used instead.
"""

# ruff: noqa: E501  (the embedded spec samples keep their original long lines)
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DUMMY_CREDENTIALS, Server

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = ROOT.parent / "shared" / "spec"

# Generous: the samples ask for up to 1000 tokens from a CPU model.
EXAMPLE_TIMEOUT_S = 300


_BASIC_EXAMPLE = r'''import boto3
import json

# Initialize the Bedrock Runtime client
bedrock_runtime = boto3.client(
    'bedrock-runtime',
    region_name='us-west-2'
)

# Prepare the request
model_id = "meta.llama3-1-70b-instruct-v1:0"
prompt = "Explain the concept of machine learning in simple terms."

# Format prompt with Llama's special tokens
formatted_prompt = f"""
<|begin_of_text|><|start_header_id|>user<|end_header_id|>
{prompt}
<|eot_id|>
<|start_header_id|>assistant<|end_header_id|>
"""

body = json.dumps({
    "prompt": formatted_prompt,
    "max_gen_len": 512,
    "temperature": 0.5,
    "top_p": 0.9
})

# Invoke the model
response = bedrock_runtime.invoke_model(
    modelId=model_id,
    body=body
)

# Parse the response
response_body = json.loads(response['body'].read())
generated_text = response_body['generation']
print(generated_text)
'''

_STREAMING_EXAMPLE = r'''import boto3
import json

bedrock_runtime = boto3.client(
    'bedrock-runtime',
    region_name='us-west-2'
)

model_id = "meta.llama3-2-11b-instruct-v1:0"
prompt = "Write a Python function to sort a list of dictionaries by a specific key."

formatted_prompt = f"""
<|begin_of_text|><|start_header_id|>user<|end_header_id|>
{prompt}
<|eot_id|>
<|start_header_id|>assistant<|end_header_id|>
"""

body = json.dumps({
    "prompt": formatted_prompt,
    "max_gen_len": 1000,
    "temperature": 0.7
})

# Streaming invoke
response = bedrock_runtime.invoke_model_with_response_stream(
    modelId=model_id,
    body=body
)

# Process streaming response
stream = response.get('body')
if stream:
    for event in stream:
        chunk = event.get('chunk')
        if chunk:
            chunk_data = json.loads(chunk.get('bytes').decode())
            if 'generation' in chunk_data:
                print(chunk_data['generation'], end='')
'''

_CONVERSATION_EXAMPLE = r"""import boto3
import json

bedrock_runtime = boto3.client(
    'bedrock-runtime',
    region_name='us-west-2'
)

model_id = "meta.llama3-1-8b-instruct-v1:0"

# Multi-turn conversation
conversation_history = [
    ("user", "What are the benefits of renewable energy?"),
    ("assistant", "Renewable energy offers several key benefits: environmental sustainability, reduced greenhouse gas emissions, energy independence, job creation, and long-term cost savings."),
    ("user", "Can you elaborate on the job creation aspect?")
]

# Build conversation prompt
conversation_prompt = "<|begin_of_text|>"
for role, message in conversation_history:
    conversation_prompt += f"<|start_header_id|>{role}<|end_header_id|>\n{message}\n<|eot_id|>\n"
conversation_prompt += "<|start_header_id|>assistant<|end_header_id|>\n"

body = json.dumps({
    "prompt": conversation_prompt,
    "max_gen_len": 512,
    "temperature": 0.6,
    "top_p": 0.9
})

response = bedrock_runtime.invoke_model(
    modelId=model_id,
    body=body
)

response_body = json.loads(response['body'].read())
print(response_body['generation'])
"""

_BATCH_EXAMPLE = r'''# Example of batch processing for multiple prompts
import boto3
import json
from concurrent.futures import ThreadPoolExecutor

bedrock_runtime = boto3.client('bedrock-runtime', region_name='us-west-2')

def process_prompt(prompt):
    model_id = "meta.llama3-1-8b-instruct-v1:0"
    formatted_prompt = f"""
    <|begin_of_text|><|start_header_id|>user<|end_header_id|>
    {prompt}
    <|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>
    """
~
    body = json.dumps({
        "prompt": formatted_prompt,
        "max_gen_len": 256,
        "temperature": 0.5
    })
~
    response = bedrock_runtime.invoke_model(
        modelId=model_id,
        body=body
    )
~
    return json.loads(response['body'].read())['generation']

# Process multiple prompts in parallel
prompts = [
    "Summarize the benefits of cloud computing",
    "Explain the concept of machine learning",
    "What are the advantages of microservices architecture?"
]

with ThreadPoolExecutor(max_workers=3) as executor:
    results = list(executor.map(process_prompt, prompts))

for prompt, result in zip(prompts, results):
    print(f"Prompt: {prompt}")
    print(f"Response: {result}\n")
'''.replace("\n~\n", "\n    \n")

# --- locating the samples --------------------------------------------------------------------------------------------

# test id -> the spec heading whose first ```python block is the sample
HEADINGS = {
    "basic": "Basic Text Generation Example",
    "streaming": "Streaming Response Example",
    "conversation": "Conversation Example",
    "batch": "Batch Processing Example",
}

# Verbatim copies of the spec's code blocks, used when the spec file is not available. Whitespace-only lines of the
# batch sample are written as "~" here (so the source has no trailing whitespace) and restored by the .replace().
EMBEDDED = {
    "basic": _BASIC_EXAMPLE,
    "streaming": _STREAMING_EXAMPLE,
    "conversation": _CONVERSATION_EXAMPLE,
    "batch": _BATCH_EXAMPLE,
}


def spec_file() -> Path | None:
    """The single product spec (``*.txt``) under ``../shared/spec``, or None when it is not there."""
    if not SPEC_DIR.is_dir():
        return None
    candidates = sorted(SPEC_DIR.glob("*.txt"))
    if len(candidates) != 1:
        return None
    return candidates[0]


def extract_example(spec_text: str, heading: str) -> str:
    """The body of the first ```python fence under the markdown heading `heading` (must be in that section)."""
    match = re.search(rf"^#+ {re.escape(heading)}[ \t]*$", spec_text, flags=re.MULTILINE)
    assert match, f"heading {heading!r} not found in the spec"
    fence = spec_text.find("```python\n", match.end())
    assert fence != -1, f"no ```python block after {heading!r}"
    between = spec_text[match.end() : fence]
    assert not re.search(r"^#+ ", between, flags=re.MULTILINE), f"no ```python block in section {heading!r}"
    start = fence + len("```python\n")
    end = spec_text.find("\n```", start)
    assert end != -1, f"unterminated ```python block under {heading!r}"
    return spec_text[start : end + 1]


def example_code(name: str) -> str:
    path = spec_file()
    if path is None:
        return EMBEDDED[name]
    return extract_example(path.read_text(encoding="utf-8"), HEADINGS[name])


# --- running them ----------------------------------------------------------------------------------------------------


def example_env(server: Server) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_ENDPOINT_URL=server.url,
        **DUMMY_CREDENTIALS,
    )
    return env


def run_example(name: str, server: Server, cwd: Path) -> str:
    """Run the sample in a fresh interpreter; assert it exits 0 and return its stdout."""
    code = example_code(name)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=example_env(server),
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=EXAMPLE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, (
        f"{name} sample exited with {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        f"\n--- server log (tail)\n{server.log_path.read_text(errors='replace')[-4000:]}"
    )
    return result.stdout


# --- tests -----------------------------------------------------------------------------------------------------------


def test_embedded_copies_match_spec() -> None:
    path = spec_file()
    if path is None:
        pytest.skip(f"no single *.txt spec under {SPEC_DIR}")
    spec_text = path.read_text(encoding="utf-8")
    for name, heading in HEADINGS.items():
        assert extract_example(spec_text, heading) == EMBEDDED[name], f"embedded copy of {heading!r} drifted"


@pytest.mark.parametrize("name", ["basic", "streaming", "conversation"])
def test_single_prompt_example(name: str, server: Server, tmp_path: Path) -> None:
    stdout = run_example(name, server, tmp_path)
    assert stdout.strip(), f"{name} sample printed no generation"


def test_batch_example(server: Server, tmp_path: Path) -> None:
    stdout = run_example("batch", server, tmp_path)
    prompts = [
        "Summarize the benefits of cloud computing",
        "Explain the concept of machine learning",
        "What are the advantages of microservices architecture?",
    ]
    headers = [f"Prompt: {prompt}\nResponse: " for prompt in prompts]
    assert stdout.startswith(headers[0]), stdout
    assert stdout.count("Response: ") >= len(prompts), stdout
    position = 0
    for index, header in enumerate(headers):
        start = stdout.index(header, position) + len(header)
        end = stdout.index(headers[index + 1], start) if index + 1 < len(headers) else len(stdout)
        assert stdout[start:end].strip(), f"empty response for {prompts[index]!r}:\n{stdout}"
        position = end
