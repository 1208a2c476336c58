"""Testbed files: their schemas, the scenario, units and names, and one YAML loading path."""
