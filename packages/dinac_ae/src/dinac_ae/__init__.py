"""dinac_ae: not implemented yet."""
