"""Stores of the system register."""
