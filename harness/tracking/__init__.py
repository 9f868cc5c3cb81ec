"""Tracking in MLflow: the store and its URL (``store``), one run's buffered writer (``tracker``), and which runs are
still alive (``liveness``)."""

from harness.tracking.store import DEFAULT_TRACKING_URI, StoreURL, TrackingError, check_store, client_for, parse_store_url, tracking_uri
from harness.tracking.tracker import MlflowTracker

__all__ = ["DEFAULT_TRACKING_URI", "MlflowTracker", "StoreURL", "TrackingError", "check_store", "client_for", "parse_store_url", "tracking_uri"]
