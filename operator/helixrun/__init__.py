"""helixrun: Kubernetes-native training for biological foundation models."""
