"""Spec investigation: what a real checkpoint settles of a family's open points.

One module per family that has open points it can check from a file header, named after the
family (`diffae.investigation.m_diffae`). Tools reach it by the family's name, found through the
entry points; the runtime packages only declare their open points (e.g. `m_diffae.OpenPoints`).
"""
