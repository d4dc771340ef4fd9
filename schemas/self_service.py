"""Property models of self-service touchpoints: help articles, chatbots, IVR."""

from pydantic import Field

from schemas.envelope import TouchpointProperties


class KbArticleViewProperties(TouchpointProperties):
    """A help-centre article was read."""

    article_id: str
    helpful: bool | None = None


class ChatbotSessionProperties(TouchpointProperties):
    """A conversation with a bot ended."""

    handed_off: bool
    resolved: bool
    intent: str | None = None


class IvrSessionProperties(TouchpointProperties):
    """A call through the phone menu ended."""

    transferred_to_agent: bool
    abandoned: bool
    menu_path: list[str] | None = Field(
        default=None, description="The menu options chosen, in order."
    )
