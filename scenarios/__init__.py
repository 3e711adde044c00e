"""The scenarios that ship with vecmig (TOML files beside this one); see `vecmig.sim.scenario`."""
