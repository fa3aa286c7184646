"""The device program (C sources, board hooks, linker templates) shipped as package data, so an
installed `lcs build --target <mcu board>` finds it. Nothing here is Python; see README.md and PROTOCOL.md."""
