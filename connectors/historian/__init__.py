"""The historian: raw points into PostgreSQL/TimescaleDB by binary COPY, idempotently."""
