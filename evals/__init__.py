"""Measurements run on demand (videochat eval): lip-sync figures."""
