"""Bedrock vocabulary: catalog, model identifiers, native bodies, prompt formats. Pure: no I/O."""
