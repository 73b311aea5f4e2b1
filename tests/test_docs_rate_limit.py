"""docs/cli.md says where the rate limit holds (issue 15 point 5): exact at admission (the bucket, tested in
tests/test_access.py), not at the bus, where frames admitted apart can leave together."""

from pathlib import Path

CLI = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_doc_states_the_rate_limit_at_admission_and_what_the_bus_can_see():
    text = " ".join(CLI.read_text().split())  # lines joined: the claims may wrap anywhere
    assert "Where the limit holds: at admission." in text
    assert "at most `burst + rate * t` frames from the peer are admitted" in text
    assert "A window of t seconds on the bus holds at most `burst + rate * (t + J)`" in text
    assert "frames from the peer reach the buses" not in text  # the old claim, not measured at the bus
