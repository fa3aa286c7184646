"""Flashable images of a firmware ELF: a raw `.bin` and an Intel `.hex` holding exactly the ELF's loadable bytes.

    images = write_images(Path("build/firmware.elf"))
    # -> Images(bin=build/firmware.bin, hex=build/firmware.hex, base=0x08000000, size=...)

Loadable bytes are the contents of the ELF's PT_LOAD segments at their load (physical) addresses: code, read-only
data, the weight store and the initial values of .data, which the startup copies to RAM. Segments without file bytes
(.bss, the spare weight bank) are not part of an image. The `.hex` carries each byte at its address; the `.bin` is one
block from the lowest loadable address to the highest, gaps filled with 0xFF (erased flash), to be written at `base`.
pyelftools reads the segments, intelhex writes both files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lcs.errors import LcsError

ERASED = 0xFF  # the value of erased NOR flash: what a gap in the .bin stands for


@dataclass(frozen=True)
class Images:
    bin: Path
    hex: Path
    base: int  # address of the .bin's first byte
    size: int  # bytes in the .bin


def loadable_segments(elf: Path) -> list[tuple[int, bytes]]:
    """[(load address, bytes)] of every PT_LOAD segment with file contents, sorted by address."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        try:
            image = ELFFile(f)
        except Exception as exc:  # pyelftools raises its own error types for anything that is not an ELF
            raise LcsError(f"{elf} is not an ELF file ({exc})") from None
        segments = [(seg["p_paddr"], seg.data()[: seg["p_filesz"]]) for seg in image.iter_segments()
                    if seg["p_type"] == "PT_LOAD" and seg["p_filesz"] > 0]
    segments.sort()
    for (a, da), (b, _) in zip(segments, segments[1:]):
        if a + len(da) > b:
            raise LcsError(f"{elf}: loadable segments overlap at 0x{b:08x}")
    if not segments:
        raise LcsError(f"{elf} has no loadable bytes")
    return segments


def write_images(elf: Path, out_dir: Path | None = None) -> Images:
    """Write `<stem>.bin` and `<stem>.hex` beside the ELF (or into `out_dir`)."""
    from intelhex import IntelHex

    elf = Path(elf)
    out_dir = Path(out_dir) if out_dir is not None else elf.parent
    ih = IntelHex()
    for address, data in loadable_segments(elf):
        ih.frombytes(data, offset=address)
    ih.padding = ERASED
    bin_path, hex_path = out_dir / f"{elf.stem}.bin", out_dir / f"{elf.stem}.hex"
    base, end = ih.minaddr(), ih.maxaddr()
    with open(bin_path, "wb") as f:
        f.write(bytes(ih.tobinarray(start=base, end=end)))
    ih.start_addr = None  # the start address record would be the ELF entry; Cortex-M boots from its vector table
    with open(hex_path, "w") as f:
        ih.write_hex_file(f, write_start_addr=False)
    return Images(bin_path, hex_path, base, end - base + 1)
