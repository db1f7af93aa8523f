"""Matching stage: faces in photos, gallery enrolment, bulk matching runs."""
