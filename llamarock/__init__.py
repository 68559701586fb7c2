"""llamarock: Amazon Bedrock's Meta Llama API, self-hosted on real Llama-architecture models."""

__version__ = "0.1.0"
