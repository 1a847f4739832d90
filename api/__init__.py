"""Shared API: typed models of MoEDeployment/MoEPool, presets, validation and generated schemas."""
