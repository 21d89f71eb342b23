"""Over-the-air model updates: a TUF update repository, the device agent, fleet status."""
