"""Tracking in MLflow: the store and its URL (``store``), one run's buffered writer (``tracker``), and which runs are
still alive (``liveness``)."""

from harness.tracking.store import StoreURL, TrackingError, check_store, client_for, parse_store_url, project_root, tracking_uri
from harness.tracking.tracker import MlflowTracker

__all__ = ["MlflowTracker", "StoreURL", "TrackingError", "check_store", "client_for", "parse_store_url", "project_root", "tracking_uri"]
