"""The HTTP collector: producers send touchpoints over HTTP, natively or as Segment calls."""
