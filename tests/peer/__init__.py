"""Tests of the peer role."""
