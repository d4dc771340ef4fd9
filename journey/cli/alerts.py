"""`journey alerts`: deliver friction events to console, file and webhook sinks."""
