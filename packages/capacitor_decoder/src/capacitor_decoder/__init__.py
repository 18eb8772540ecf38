"""capacitor_decoder: not implemented yet."""
