"""The trail each check leaves: a span, an audit event and metrics."""
