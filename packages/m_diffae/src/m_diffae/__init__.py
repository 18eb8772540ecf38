"""m_diffae: not implemented yet."""
