"""The analysis builders by name, with their options parsed from text (for the HTTP API)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from projections.clickhouse.analysis import (
    Period,
    customer_timeline_sql,
    paths_sql,
    retention_sql,
    stage_map_sql,
    touchpoint_flows_sql,
)
from projections.clickhouse.cx import (
    friction_impact_sql,
    impact_funnel,
    kpis_sql,
    parse_grouping,
    split_steps,
)
from projections.clickhouse.funnels import DEFAULT_WINDOW, FunnelSpec, FunnelSpecError, parse_funnel
from projections.clickhouse.queries import Params


def funnel_request(query: Mapping[str, str], steps: Sequence[str],
                   exclude: Sequence[str]) -> FunnelSpec:
    """A funnel from query-string options: `step` and `exclude` may repeat."""
    allowed = {"step", "exclude", "order", "window", "breakdown", "attribution", "since", "until"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise AnalysisRequestError(f"funnel takes no option {', '.join(unknown)}; it takes "
                                   f"{', '.join(sorted(allowed))}")
    if not steps:
        raise AnalysisRequestError("funnel needs ?step=TYPE&step=TYPE...")
    try:
        options: dict[str, Any] = {k: query[k] for k in ("order", "window", "breakdown",
                                                          "attribution") if k in query}
        for key in ("since", "until"):
            if key in query:
                options[key] = _moment(query[key])
        return parse_funnel(list(steps), exclude=list(exclude), **options)
    except (FunnelSpecError, ValueError) as exc:
        raise AnalysisRequestError(f"funnel: {exc}") from exc


class AnalysisRequestError(ValueError):
    """An analysis name or option that cannot be served; the message says which."""


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def friction_impact_request(
    *, funnel: Sequence[str] | None = None, window: str = DEFAULT_WINDOW, **options: Any
) -> tuple[str, Params]:
    """`friction_impact_sql` with its funnel given as step texts (`funnel=a,b[x=1]`)."""
    return friction_impact_sql(impact_funnel(funnel, window), **options)


Parser = Callable[[str], Any]
_RANGE: dict[str, Parser] = {"since": _moment, "until": _moment}

ANALYSES: dict[str, tuple[Callable[..., tuple[str, Params]], dict[str, Parser]]] = {
    "paths": (paths_sql, {"start_at": str, "end_at": str, "top": int, "max_length": int,
                          "collapse_repeats": _flag, "exclude": _list, **_RANGE}),
    "flows": (touchpoint_flows_sql, {"conversion": str, "top": int, "collapse_repeats": _flag,
                                     "exclude": _list, **_RANGE}),
    "map": (stage_map_sql, dict(_RANGE)),
    "retention": (retention_sql, {"cohort_event": str, "return_event": str, "period": Period,
                                  "periods": int, **_RANGE}),
    "customer": (customer_timeline_sql, {"customer": str, "limit": int}),
    "kpis": (kpis_sql, {"by": parse_grouping, **_RANGE}),
    "impact": (friction_impact_request, {"funnel": split_steps, "window": str,
                                         "retention_from_days": int, "retention_to_days": int,
                                         "revenue_days": int, "rules": _list, **_RANGE}),
}


def analysis_sql(name: str, options: Mapping[str, str],
                 fixed: Mapping[str, Any] | None = None) -> tuple[str, Params]:
    """The SQL and parameters of analysis `name`, options given as text (query strings);
    `fixed` are the server's own arguments (the KPIs' SLA deadlines), never the caller's."""
    if name not in ANALYSES:
        raise AnalysisRequestError(f"no analysis {name!r}; there are {', '.join(ANALYSES)}")
    builder, parsers = ANALYSES[name]
    unknown = sorted(set(options) - set(parsers))
    if unknown:
        raise AnalysisRequestError(
            f"{name} takes no option {', '.join(unknown)}; it takes {', '.join(parsers)}")
    try:
        kwargs = {key: parsers[key](value) for key, value in options.items()}
        kwargs.update(fixed or {})
        if name == "customer":
            customer = kwargs.pop("customer", None)
            if not customer:
                raise ValueError("customer needs ?customer=ID")
            return builder(customer, **kwargs)
        return builder(**kwargs)
    except (TypeError, ValueError) as exc:
        raise AnalysisRequestError(f"{name}: {exc}") from exc
