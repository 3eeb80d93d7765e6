"""The Litestar control API. For now: health, and the flow-spec schema and validation that the
flow designer uses; devices, tags and the supervisor come with later issues."""
