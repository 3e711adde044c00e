"""`vecmig zoo`: the bug zoo and its catch matrix. Each protection of the safe strategy is
switched off alone and run through the simulator, the state machine and a load test, to show
that some engine catches it (`catalog` says what runs, `search` runs it, `matrix` reports)."""
