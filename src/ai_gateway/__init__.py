"""AI Gateway: one API in front of Ollama, OpenAI, Anthropic and OpenRouter."""

__version__ = "0.1.0"
