"""Kopf operator: reconciles MoEDeployment into MoEPools, KubeRay RayClusters, services and config."""
