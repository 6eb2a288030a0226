"""The operator: kopf handlers over the pure plan/render core."""
