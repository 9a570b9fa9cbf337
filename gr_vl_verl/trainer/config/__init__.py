"""Hydra configs of the plugin trainer (a package so ``pkg://gr_vl_verl.trainer.config`` resolves)."""
