"""Evaluation stage: calibrated thresholds, metrics, LFW protocols, one-shot, reports, champion."""
