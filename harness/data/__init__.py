"""What the harness judges: the simulated scenarios (`simulate`) and the health scan of their frames (`health`)."""
