"""Property models of feedback touchpoints: surveys, reviews, social mentions."""

from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationInfo, field_validator

from schemas.envelope import TouchpointProperties
from schemas.values import integral

SurveyKind = Literal["csat", "nps", "ces"]

SCORE_RANGES: Final[dict[str, tuple[int, int]]] = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}
"""Inclusive score range of each survey kind."""


def _score_ranges_in_schema(schema: dict[str, Any]) -> None:
    schema["allOf"] = [
        {
            "if": {"properties": {"survey": {"const": kind}}, "required": ["survey"]},
            "then": {"properties": {"score": {"minimum": low, "maximum": high}}},
        }
        for kind, (low, high) in SCORE_RANGES.items()
    ]


class SurveyResponseProperties(TouchpointProperties):
    """An answer to a CSAT (1-5), NPS (0-10) or CES (1-7) survey."""

    model_config = ConfigDict(json_schema_extra=_score_ranges_in_schema)

    survey: SurveyKind
    score: Annotated[int, Strict(), Field(ge=0, le=10), BeforeValidator(integral)]
    comment: str | None = None
    case_id: str | None = Field(default=None, description="The case the survey is about.")

    @field_validator("score")
    @classmethod
    def _score_in_survey_range(cls, value: int, info: ValidationInfo) -> int:
        survey = info.data.get("survey")
        if survey in SCORE_RANGES:
            low, high = SCORE_RANGES[survey]
            if not low <= value <= high:
                raise ValueError(f"a {survey} score must be between {low} and {high}")
        return value


class ReviewProperties(TouchpointProperties):
    """A product or service review."""

    rating: Annotated[int, Strict(), Field(ge=1, le=5), BeforeValidator(integral)]
    text: str | None = None
    product_id: str | None = None


class SocialMentionProperties(TouchpointProperties):
    """The company or product was mentioned on social media."""

    sentiment: Literal["positive", "neutral", "negative"]
    text: str | None = None
    public: bool | None = None
