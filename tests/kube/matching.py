"""Match a request against a kmock view without scanning the request log.

kmock decides whether a reaction applies with `request in reaction._source`, which iterates every
request the view has ever seen and re-evaluates its filters on each: the cost of one request grows
with the number served before it. Filters, priorities and groups can be decided on the request
alone; only slices (`[:1]`) and live streams need the log, and the log is bounded.
"""

from __future__ import annotations

from kmock._internal import dsl, rendering


def view_matches(view: dsl.View, request: rendering.Request) -> bool:
    if isinstance(view, dsl.Root):
        return True
    if isinstance(view, dsl.Filter):
        return bool(view.criteria(request)) and view_matches(view._source, request)
    if isinstance(view, dsl.Exclusion):
        return view_matches(view._source, request) and not any(
            view_matches(excluded, request) for excluded in view._exclusions
        )
    if isinstance(view, dsl.OrGroup):
        return any(view_matches(source, request) for source in view._sources)
    if isinstance(view, dsl.AndGroup):
        return all(view_matches(source, request) for source in view._sources)
    if isinstance(view, (dsl.Priority, dsl.Reaction)):
        return view_matches(view._source, request)
    # Slicer, Stream and anything newer: ask kmock (bounded by the log size).
    return request in view
