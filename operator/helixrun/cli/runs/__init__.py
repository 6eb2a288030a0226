"""`helixrun status`, `helixrun watch`, `helixrun plot`: follow runs in a cluster or in a local run folder.

A RUN argument that is an existing directory (or `--dir DIR`) is a local run
made by `helixrun-train --local --workdir DIR` (files.py reads it). Anything
else is a TrainingRun name in the cluster: its status is read with the
Kubernetes client (cluster.py), and curves come from Prometheus (`--prometheus
URL`, prometheus.py). views.py turns what was read into rows and series;
table.py and plot.py draw them; commands.py puts them together. Readers are
imported by the command that needs them, so `helixrun status DIR` never loads
the Kubernetes client or matplotlib.
"""
