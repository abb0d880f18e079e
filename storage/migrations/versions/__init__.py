"""Revisions of the energy-nas schema, oldest first."""
