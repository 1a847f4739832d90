"""The planner service: the live loop per MoEDeployment, the HTTP API and the dashboard."""
