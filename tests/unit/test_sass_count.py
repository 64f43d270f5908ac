"""The SASS loop counter on hand-written listings (both nvdisasm styles)."""

import pytest

from mustafar.bench.sass import main_loop_instructions, main_loop_opcodes

LISTING = """\
--:-:-:-:1\tMOV R1, c[0x0][0x28];
--:-:-:-:1\tISETP.GE.AND P0, PT, R2, R3, PT;
--:-:-:-:6\t@P0 BRA LBB2;
LBB1:
--:-:-:-:1\tFLO.U32 R5, R4;
--:-:-:-:1\tSHF.L.U32 R6, R0, R5, RZ;
--:-:-:-:1\t@!P1 STS.U16 [R7], R8;
--:-:-:-:6\t@!P0 BRA LBB1;
LBB2:
--:-:-:-:1\tEXIT;
.L_x_0:
        /*0100*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0110*/               @P0 BRA `(.L_x_0) ;
"""


def test_counts_the_largest_loop_body_with_the_marker():
    # LBB1's body: FLO, SHF, STS and its branch; the .L_x_0 loop has 2 instructions and no STS
    assert main_loop_instructions(LISTING, marker="STS") == 4
    assert main_loop_instructions(LISTING, marker="IADD3") == 2


def test_reads_the_plain_listing_style():
    assert main_loop_instructions(LISTING.split("EXIT;")[1], marker="BRA") == 2


def test_no_loop_is_an_error():
    with pytest.raises(ValueError, match="no loop"):
        main_loop_instructions(LISTING, marker="HMMA")


def test_counts_the_loop_per_opcode():
    # LBB1's body by mnemonic: the predicate and the modifiers (.U32, .L.U32, .U16) are not part of it
    assert main_loop_opcodes(LISTING, marker="STS") == {"FLO": 1, "SHF": 1, "STS": 1, "BRA": 1}
    assert main_loop_opcodes(LISTING.split("EXIT;")[1], marker="BRA") == {"IADD3": 1, "BRA": 1}
