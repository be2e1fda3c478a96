"""agentruns: deploy LLM agents as an asynchronous HTTP API."""

__version__ = "0.1.0"
