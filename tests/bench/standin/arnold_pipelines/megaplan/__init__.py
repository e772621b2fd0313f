"""STAND-IN alias of arnold.pipelines.megaplan (newer package spelling)."""
