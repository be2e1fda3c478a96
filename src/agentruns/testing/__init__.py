"""Fake model providers for tests, demos and benchmarks (no network, no keys).

    from agentruns.testing import start_in_thread
    from agentruns.testing.fake_openai import create_app

    with start_in_thread(create_app()) as fake:
        fake.script({"text": "hello"})
        model = OpenAIChatModel("fake", base_url=fake.url, api_key="k", client=client)

Each fake is also runnable: `python -m agentruns.testing.fake_openai --port N`
(or `fake_anthropic`) and steered over HTTP with `/_control/*`.
"""

# The fake apps are not imported here so `python -m` can run them cleanly.
from agentruns.testing.fake_provider import FakeProviderState
from agentruns.testing.server import FakeServer, start_in_thread

__all__ = ["FakeProviderState", "FakeServer", "start_in_thread"]
