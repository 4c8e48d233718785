"""Pure-numpy reference implementations used by fidelity tests."""
