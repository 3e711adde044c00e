"""Test machinery that ships with the package, for your adapters and for vecmig's own tests:
the adapter conformance suite (`conformance`), the migration state machine (`machine`, with
`shrink`, the search that shrinks its failures; `vecmig zoo` runs it too), the machine on your
adapter (`migration`), how the adapter under test is named (`adapters`) and the pytest plugin
that wires them up (`plugin`, loaded through the `pytest11` entry point). Needs the `pytest`
extra.

Nothing is imported here: the plugin is loaded in every pytest run of an environment where
vecmig is installed, and must stay cheap.
"""
