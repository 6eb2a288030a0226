"""Telemetry: the operator's metrics, the Grafana dashboards and the alert rules.

Everything here is built from `helixrun.metrics_contract`, the one list of
series the trainer and the operator export.
"""
