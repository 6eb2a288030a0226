"""helixrun: Kubernetes-native training for biological foundation models.

This package is the shared core (api, pools, recipes, resolve, planner, render,
checkpoint_layout, metrics_contract), which the trainer imports too, without
kopf or torch; the `helixrun` CLI (cli/); and, as the `operator` extra, the
kopf controller (controller/). Kubernetes and HTTP calls stay in the edge
modules tests/operator/test_io_edges.py names.
"""
