"""Generators of the files derived from the typed API models: the CRDs (`crds`) and the Helm
chart's generated parts (`chart`: values schema, CRD copies, the operator's RBAC rules).

They live outside `moeplane.api` because the chart also needs the operator's RBAC rules, and the
API must never import the operator. `make crds` runs both; drift tests check the committed files.
"""
