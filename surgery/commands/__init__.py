"""The ``surgery`` command line: one module per command group, each only parsing options into an options
dataclass, calling one library function and printing what it returned.

Command modules import the library inside the command function (the one place the project allows a
function-level import), so that listing the commands for ``surgery --help`` loads no model code.
"""
