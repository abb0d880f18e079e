"""Alembic migrations of the energy-nas tables (package data; run through ``nas storage upgrade``)."""
