"""Test helpers shipped with the gateway (mock upstream LLM server)."""
