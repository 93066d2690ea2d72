"""The `mmstudy` command's sub-commands, one module per group; each adds its parsers with `add_commands`
and holds their handlers, which call the library."""
