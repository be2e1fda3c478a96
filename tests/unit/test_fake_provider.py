"""The fake model's knobs that the benchmarks use."""

from __future__ import annotations

from agentruns.testing.fake_provider import Conversation, FakeProviderState

TOOLS = [("get_current_time", {"type": "object"})]
ASKING = Conversation("what time is it?", TOOLS, set(), [], 4)
ANSWERED = Conversation("what time is it?", TOOLS, {"get_current_time"}, ["12:00"], 5)


def test_the_delay_after_a_tool_holds_only_the_calls_that_follow_one() -> None:
    state = FakeProviderState()
    state.configure(mode="bench", first_token_delay_s=0.5, first_token_delay_after_tool_s=7)
    first, second = state.next_reply(ASKING), state.next_reply(ANSWERED)
    assert first.tool_calls and first.first_token_delay_s == 0.5
    assert second.text and second.first_token_delay_s == 7
    state.configure(first_token_delay_after_tool_s=-1)  # off again
    assert state.next_reply(ANSWERED).first_token_delay_s == 0.5
