"""The food-delivery reference system: six services built from interlink's public API, behind
interlink's API gateway.

Run it with ``interlink up examples/food_delivery/system.yaml``; see docs/reference-system.md.
"""
