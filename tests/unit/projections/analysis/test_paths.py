"""Flows as Sankey data."""

from __future__ import annotations

from projections.analysis.paths import sankey


def test_sankey_names_nodes_once_in_order_of_the_links() -> None:
    flows = [
        {"source": "a", "target": "b", "transitions": 5, "people": 4,
         "converted_transitions": 2, "converted_people": 2},
        {"source": "b", "target": "a", "transitions": 3, "people": 3,
         "converted_transitions": 0, "converted_people": 0},
        {"source": "b", "target": "c", "transitions": 1, "people": 1,
         "converted_transitions": 1, "converted_people": 1},
    ]  # fmt: skip
    data = sankey(flows, "purchase")
    assert data["nodes"] == [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert data["links"][0] == {
        "source": "a", "target": "b", "value": 5, "people": 4, "converted": 2,
        "converted_people": 2,
    }  # fmt: skip
    assert data["conversion"] == "purchase"
