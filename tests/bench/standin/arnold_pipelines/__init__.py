"""STAND-IN namespace of the megaplan core's package (`arnold_pipelines`, test double)."""
