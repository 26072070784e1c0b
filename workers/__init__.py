"""Runnable example apps; ``python -m workers.demo`` runs the demo."""
