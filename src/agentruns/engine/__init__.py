"""The engine: workers claim runs and execute the agent loop."""
