// The AWS SDK for JavaScript v3, unmodified and with its default request handlers (HTTP/2 for bedrock-runtime,
// HTTP/1.1 for bedrock), against a live llamarock server. Run by tests/test_js_sdk.py:
//   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... node sdk.mjs ENDPOINT_URL MODEL_ID
// Prints one JSON object: what each operation returned, for the test to check.
import { BedrockRuntimeClient, ConverseCommand, ConverseStreamCommand, InvokeModelCommand,
  InvokeModelWithResponseStreamCommand } from "@aws-sdk/client-bedrock-runtime";
import { BedrockClient, ListFoundationModelsCommand } from "@aws-sdk/client-bedrock";

const [endpoint, modelId] = process.argv.slice(2);
const config = { endpoint, region: "us-west-2", maxAttempts: 1 };  // credentials: AWS_ACCESS_KEY_ID/SECRET from env
const runtime = new BedrockRuntimeClient(config);
const control = new BedrockClient(config);
const decoder = new TextDecoder();
const messages = [{ role: "user", content: [{ text: "Say hello." }] }];
const prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSay hello.<|eot_id|>" +
  "<|start_header_id|>assistant<|end_header_id|>\n\n";
const body = JSON.stringify({ prompt, max_gen_len: 32, temperature: 0 });
const out = {
  runtimeHandler: (await runtime.config.requestHandler).constructor.name,
  controlHandler: (await control.config.requestHandler).constructor.name,
};

const invoked = await runtime.send(new InvokeModelCommand({ modelId, body, contentType: "application/json" }));
out.invokeModel = { status: invoked.$metadata.httpStatusCode, body: JSON.parse(decoder.decode(invoked.body)) };

const streamed = await runtime.send(new InvokeModelWithResponseStreamCommand({ modelId, body, contentType: "application/json" }));
out.invokeModelWithResponseStream = [];
for await (const event of streamed.body) {
  out.invokeModelWithResponseStream.push(
    event.chunk ? { chunk: JSON.parse(decoder.decode(event.chunk.bytes)) } : { other: Object.keys(event) });
}

const conversed = await runtime.send(new ConverseCommand({ modelId, messages, inferenceConfig: { maxTokens: 32 } }));
out.converse = { output: conversed.output, stopReason: conversed.stopReason, usage: conversed.usage };

const conversation = await runtime.send(
  new ConverseStreamCommand({ modelId, messages, inferenceConfig: { maxTokens: 32 } }));
out.converseStream = [];
for await (const event of conversation.stream) {
  out.converseStream.push(event);
}

const listed = await control.send(new ListFoundationModelsCommand({}));
out.listFoundationModels = listed.modelSummaries.map((summary) => summary.modelId);

runtime.destroy();
control.destroy();
process.stdout.write(JSON.stringify(out));
