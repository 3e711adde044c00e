"""The cost profiles that ship with vecmig (JSON files beside this one), measured by
`vecmig calibrate`; see `vecmig.harness.costs`."""
