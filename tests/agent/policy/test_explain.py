from tests.agent.policy.test_policy import CONTRACT
from weightwarden.agent.policy.explain import explain
from weightwarden.agent.policy.loader import parse_policy

HEAD = "apiVersion: weightwarden/v1\nkind: EgressPolicy\nmetadata: {name: e}\nspec:\n"


def test_capped_route_time_is_size_over_rate() -> None:
    report = explain(parse_policy(CONTRACT).policy, 140 * 10**9)
    cap = next(r for r in report["routes"] if r["name"] == "cap:host-default")
    assert cap["seconds"] == 140 * 10**9 * 8 / 20_000_000  # 56,000 s: over 15 hours
    assert "15h 33m" in "\n".join(report["summary"])
    # The allowlisted range is the fast way out, and explain says so.
    assert report["min_time"].startswith("limited only by link speed")


def test_blocked_route_never_and_monitor_only() -> None:
    text = HEAD + "  caps: [{name: b, rate: 1kbit, action: block}]\n"
    report = explain(parse_policy(text).policy, 10**9)
    assert report["routes"][0]["blocked"] and report["min_time"] == "never (via cap:b)"
    mon = explain(parse_policy(HEAD + "  {}\n").policy, 10**9)
    assert "Monitor only" in mon["summary"][0]


def test_blocking_budget_bounds_a_fast_cap() -> None:
    text = HEAD + ("  caps: [{name: c, rate: 10Gbit}]\n"
                   "  budgets: [{name: d, bytes: 10GB, window: 24h, action: block}]\n")
    report = explain(parse_policy(text).policy, 140 * 10**9)
    cap = next(r for r in report["routes"] if r["name"] == "cap:c")
    assert cap["seconds"] == 13 * 86400  # 14 windows of 10 GB: the last one starts after 13 days
