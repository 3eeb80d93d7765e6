"""Flow specs: schema and validation for the designer."""
