from weightwarden.agent.attribution.nfqueue.ledger import Ledger


def test_new_flow_counts_from_zero_and_credits_owner() -> None:
    led = Ledger()
    assert led.update(("tcp", 1), 1000, ("198.18.0.2", 80), owner=42) == 1000
    assert led.update(("tcp", 1), 1500, ("198.18.0.2", 80)) == 500
    iv = led.take_interval()
    assert iv.by_owner == {42: {("198.18.0.2", 80): 1500}}
    assert iv.attributed == 1500 and iv.unowned == 0
    assert led.take_interval().attributed == 0


def test_baseline_excludes_bytes_sent_before_measurement() -> None:
    led = Ledger()
    led.baseline(("tcp", 7), 10_000, ("198.18.0.2", 80), owner=1)
    led.update(("tcp", 7), 10_300, ("198.18.0.2", 80))
    assert led.take_interval().by_owner == {1: {("198.18.0.2", 80): 300}}


def test_counter_reset_counts_from_zero_never_negative() -> None:
    led = Ledger()
    led.update("f", 5000, ("198.18.0.2", 1), owner=1)
    assert led.update("f", 200, ("198.18.0.2", 1)) == 200
    assert led.take_interval().attributed == 5200


def test_unknown_owner_is_unowned_then_owner_learned_later() -> None:
    led = Ledger()
    led.update("f", 100, ("198.18.0.2", 1))
    led.update("f", 250, ("198.18.0.2", 1), owner=9)
    iv = led.take_interval()
    assert iv.unowned == 100
    assert iv.by_owner == {9: {("198.18.0.2", 1): 150}}


def test_finish_credits_final_total_and_forgets() -> None:
    led = Ledger()
    led.update("f", 100, ("198.18.0.2", 1), owner=3)
    assert led.finish("f", 2_000_000, ("198.18.0.2", 1)) == 2_000_000 - 100
    assert "f" not in led.flows
    # A flow seen only at its end (opened and closed between samples) counts whole.
    led.finish("g", 777, ("198.18.0.3", 2), owner=4)
    iv = led.take_interval()
    assert iv.by_owner[3][("198.18.0.2", 1)] == 2_000_000
    assert iv.by_owner[4][("198.18.0.3", 2)] == 777


def test_forget_keeps_only_live_flows() -> None:
    led = Ledger()
    led.update("a", 1, ("x", 1))
    led.update("b", 1, ("x", 1))
    led.forget({"a"})
    assert set(led.flows) == {"a"}
