"""Ray clusters the project starts itself: several nodes on one machine (:mod:`.local`)."""
