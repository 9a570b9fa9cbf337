"""Imported by verl's ``verl.plugins`` entry point while ``import verl`` runs: keep it light."""
