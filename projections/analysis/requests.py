"""Questions asked as text (the HTTP API's query strings): each analysis by name, its
options parsed into a spec. The same specs the CLI builds from its options."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from projections.analysis.funnel import DEFAULT_WINDOW, FunnelSpec, parse_funnel, split_steps
from projections.analysis.impact import ImpactSpec, impact_funnel
from projections.analysis.kpis import KpiSpec, parse_grouping
from projections.analysis.paths import FlowsSpec, PathsSpec, StageMapSpec
from projections.analysis.retention import Period, RetentionSpec
from projections.analysis.spec import parse_moment
from projections.analysis.timeline import CustomerSpec


class AnalysisRequestError(ValueError):
    """An analysis name or option that cannot be served; the message says which."""


_FUNNEL_OPTIONS = ("order", "window", "breakdown", "attribution")


def funnel_request(
    query: Mapping[str, str], steps: Sequence[str], exclude: Sequence[str]
) -> FunnelSpec:
    """A funnel from query-string options: `step` and `exclude` may repeat."""
    allowed = {"step", "exclude", *_FUNNEL_OPTIONS, "since", "until"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise AnalysisRequestError(f"funnel takes no option {', '.join(unknown)}; it takes "
                                   f"{', '.join(sorted(allowed))}")
    if not steps:
        raise AnalysisRequestError("funnel needs ?step=TYPE&step=TYPE...")
    try:
        options: dict[str, Any] = {k: query[k] for k in _FUNNEL_OPTIONS if k in query}
        for key in ("since", "until"):
            if key in query:
                options[key] = parse_moment(query[key])
        return parse_funnel(list(steps), exclude=list(exclude), **options)
    except ValueError as exc:
        raise AnalysisRequestError(f"funnel: {exc}") from exc


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def impact_request(
    *, funnel: Sequence[str] | None = None, window: str = DEFAULT_WINDOW, **options: Any
) -> ImpactSpec:
    """An ImpactSpec with its funnel given as step texts (`funnel=a,b[x=1]`)."""
    return ImpactSpec(impact_funnel(funnel, window), **options)


Parser = Callable[[str], Any]
_RANGE: dict[str, Parser] = {"since": parse_moment, "until": parse_moment}

# name -> (the spec it asks for, built from keyword options; a parser per option)
ANALYSES: dict[str, tuple[Callable[..., object], dict[str, Parser]]] = {
    "paths": (PathsSpec, {"start_at": str, "end_at": str, "top": int, "max_length": int,
                          "collapse_repeats": _flag, "exclude": _list, **_RANGE}),
    "flows": (FlowsSpec, {"conversion": str, "top": int, "collapse_repeats": _flag,
                          "exclude": _list, **_RANGE}),
    "map": (StageMapSpec, dict(_RANGE)),
    "retention": (RetentionSpec, {"cohort_event": str, "return_event": str, "period": Period,
                                  "periods": int, **_RANGE}),
    "customer": (CustomerSpec, {"customer": str, "limit": int}),
    "kpis": (KpiSpec, {"by": parse_grouping, **_RANGE}),
    "impact": (impact_request, {"funnel": split_steps, "window": str,
                                "retention_from_days": int, "retention_to_days": int,
                                "revenue_days": int, "rules": _list, **_RANGE}),
}


def analysis_request(name: str, options: Mapping[str, str],
                     fixed: Mapping[str, Any] | None = None) -> object:
    """The spec of analysis `name`, options given as text (query strings); `fixed` are
    the server's own arguments (the KPIs' SLA deadlines), never the caller's."""
    if name not in ANALYSES:
        raise AnalysisRequestError(f"no analysis {name!r}; there are {', '.join(ANALYSES)}")
    make, parsers = ANALYSES[name]
    unknown = sorted(set(options) - set(parsers))
    if unknown:
        raise AnalysisRequestError(
            f"{name} takes no option {', '.join(unknown)}; it takes {', '.join(parsers)}")
    try:
        kwargs = {key: parsers[key](value) for key, value in options.items()}
        kwargs.update(fixed or {})
        if name == "customer" and not kwargs.get("customer"):
            raise ValueError("customer needs ?customer=ID")
        return make(**kwargs)
    except (TypeError, ValueError) as exc:
        raise AnalysisRequestError(f"{name}: {exc}") from exc
