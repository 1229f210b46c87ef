"""Hydra configs of ``hcl-train`` (a package so ``initialize_config_module`` can find them)."""
