"""Grafana on the historian: dashboards generated from the flows' tag model, datasource provisioning and
the read-only database role Grafana connects as."""
