"""The corpus domain of the MedLVR Dagster layer (assets, checks, resources, schedules, sensors)."""
