"""Every catalogue type: a valid example decodes, a missing or mistyped property is refused."""

from typing import Any

import orjson
import pytest

from schemas.catalogue import CATALOGUE, SERVICE_TYPES, TOUCHPOINT_TYPES, BusinessArea, area_of
from schemas.codec import InvalidTouchpointError, decode_touchpoint
from schemas.touchpoint import TOUCHPOINT_MODELS, Touchpoint
from tests.unit.schemas.examples import (
    CONTRACT_SERVICE_TYPES,
    EXAMPLE_TYPES,
    NOW,
    example,
    properties_of,
    wrong_value_for,
)


def _decode(event: dict[str, Any]) -> Touchpoint:
    return decode_touchpoint(orjson.dumps(event), now=NOW)


def _refusal(event: dict[str, Any]) -> InvalidTouchpointError:
    with pytest.raises(InvalidTouchpointError) as caught:
        _decode(event)
    return caught.value


def _required(type_name: str) -> list[str]:
    model = CATALOGUE[type_name].properties
    return [name for name, field in model.model_fields.items() if field.is_required()]


def _all_properties(type_name: str) -> list[str]:
    return list(CATALOGUE[type_name].properties.model_fields)


REQUIRED = [(t, name) for t in TOUCHPOINT_TYPES for name in _required(t)]
EVERY_PROPERTY = [(t, name) for t in TOUCHPOINT_TYPES for name in _all_properties(t)]


def test_examples_cover_the_whole_catalogue() -> None:
    assert set(EXAMPLE_TYPES) == set(TOUCHPOINT_TYPES)
    assert len(TOUCHPOINT_TYPES) == len(set(TOUCHPOINT_TYPES)) == 35


@pytest.mark.parametrize("type_name", TOUCHPOINT_TYPES)
def test_examples_fill_every_declared_property(type_name: str) -> None:
    assert set(properties_of(type_name)) == set(_all_properties(type_name))


def test_service_types_are_the_contract_service_events() -> None:
    assert SERVICE_TYPES == CONTRACT_SERVICE_TYPES
    assert all(area_of(t) is BusinessArea.SERVICE for t in SERVICE_TYPES)


def test_every_type_has_a_model_and_an_area() -> None:
    assert set(TOUCHPOINT_MODELS) == set(CATALOGUE)
    assert {kind.area for kind in CATALOGUE.values()} == set(BusinessArea)


@pytest.mark.parametrize("type_name", TOUCHPOINT_TYPES)
def test_valid_example_decodes(type_name: str) -> None:
    tp = _decode(example(type_name))
    assert isinstance(tp, TOUCHPOINT_MODELS[type_name])
    assert isinstance(tp.properties, CATALOGUE[type_name].properties)
    assert tp.type == type_name
    assert tp.properties.model_dump(exclude_unset=True) == properties_of(type_name)


@pytest.mark.parametrize(("type_name", "name"), REQUIRED)
def test_missing_required_property_is_missing_field(type_name: str, name: str) -> None:
    event = example(type_name)
    del event["properties"][name]
    error = _refusal(event)
    assert (error.reason, error.field) == ("missing_field", f"properties.{name}")


@pytest.mark.parametrize(("type_name", "name"), REQUIRED)
def test_null_required_property_is_missing_field(type_name: str, name: str) -> None:
    event = example(type_name)
    event["properties"][name] = None
    error = _refusal(event)
    assert (error.reason, error.field) == ("missing_field", f"properties.{name}")


@pytest.mark.parametrize(("type_name", "name"), EVERY_PROPERTY)
def test_wrong_typed_property_is_invalid_field(type_name: str, name: str) -> None:
    event = example(type_name)
    event["properties"][name] = wrong_value_for(event["properties"][name])
    error = _refusal(event)
    assert (error.reason, error.field) == ("invalid_field", f"properties.{name}")


@pytest.mark.parametrize("type_name", TOUCHPOINT_TYPES)
def test_properties_object_is_required_only_when_a_property_is(type_name: str) -> None:
    event = example(type_name)
    del event["properties"]
    if _required(type_name):
        error = _refusal(event)
        assert (error.reason, error.field) == ("missing_field", "properties")
    else:
        assert _decode(event).properties.model_dump(exclude_unset=True) == {}


@pytest.mark.parametrize("type_name", TOUCHPOINT_TYPES)
def test_optional_properties_may_be_absent_or_null(type_name: str) -> None:
    required = set(_required(type_name))
    absent = example(type_name)
    absent["properties"] = {k: v for k, v in absent["properties"].items() if k in required}
    _decode(absent)
    nulls = example(type_name)
    nulls["properties"] = {
        k: (v if k in required else None) for k, v in properties_of(type_name).items()
    }
    _decode(nulls)


@pytest.mark.parametrize(
    ("type_name", "name", "value"),
    [
        ("product_view", "currency", "eur"),
        ("product_view", "currency", "EURO"),
        ("product_view", "price", -0.01),
        ("product_view", "price", "19.99"),
        ("purchase", "revenue", True),
        ("refund", "amount", -5),
        ("add_to_cart", "quantity", 0),
        ("add_to_cart", "quantity", 1.5),
        ("add_to_cart", "quantity", "2"),
        ("support_contact", "direction", "sideways"),
        ("support_contact", "wait_seconds", -1),
        ("support_contact", "abandoned", "false"),
        ("support_contact", "abandoned", 0),
        ("chatbot_session", "resolved", "yes"),
        ("survey_response", "survey", "ces2"),
        ("review", "rating", 0),
        ("review", "rating", 6),
        ("social_mention", "sentiment", "angry"),
        ("community_post", "kind", "rant"),
        ("appointment", "status", "cancelled"),
        ("ivr_session", "menu_path", "billing>2"),
        ("account_updated", "fields", [1, 2]),
        ("purchase", "items", ["sku-1"]),
    ],
)
def test_out_of_contract_values_are_invalid_field(type_name: str, name: str, value: Any) -> None:
    event = example(type_name)
    event["properties"][name] = value
    error = _refusal(event)
    assert error.reason == "invalid_field"
    # Inside a list the path goes down to the item: properties.fields.0
    assert error.field is not None
    assert error.field.startswith(f"properties.{name}")


@pytest.mark.parametrize(
    ("survey", "good", "bad"),
    [("csat", [1, 5], [0, 6]), ("nps", [0, 10], [-1, 11]), ("ces", [1, 7], [0, 8])],
)
def test_survey_score_range_depends_on_the_survey(
    survey: str, good: list[int], bad: list[int]
) -> None:
    for score in good:
        props = {"survey": survey, "score": score}
        assert _decode(example("survey_response", properties=props)).properties == (
            CATALOGUE["survey_response"].properties.model_validate(props)
        )
    for score in bad:
        error = _refusal(example("survey_response", properties={"survey": survey, "score": score}))
        assert (error.reason, error.field) == ("invalid_field", "properties.score")


def test_integral_float_counts_as_an_integer() -> None:
    event = example("add_to_cart")
    event["properties"]["quantity"] = 3.0
    tp = _decode(event)
    assert tp.properties.model_dump()["quantity"] == 3


def test_integer_money_is_a_number() -> None:
    event = example("purchase")
    event["properties"]["revenue"] = 40
    assert _decode(event).properties.model_dump()["revenue"] == 40.0
