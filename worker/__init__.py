"""The RQ worker: keeps the backbone loaded across jobs and trains custom heads."""
