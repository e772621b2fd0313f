"""STAND-IN: namespace of the megaplan core test double."""
