"""Drivers: what carries out the core's requests. The simulator's driver lives in `sim`, the
live one in `vecmig.harness.service`; this package holds what they share and the step driver."""
