"""STAND-IN package root for the megaplan core (test double for the offline e2e bench; see tests/bench/README.md)."""
