"""full_capacitor: not implemented yet."""
