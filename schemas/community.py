"""Property models of community touchpoints: forum activity."""

from typing import Literal

from schemas.envelope import TouchpointProperties


class CommunityPostProperties(TouchpointProperties):
    """The customer wrote in the community forum."""

    thread_id: str
    kind: Literal["question", "answer", "comment"]
