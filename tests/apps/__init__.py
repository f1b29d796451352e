"""Tests of the users API, run against both the starter app and the reference solution."""
