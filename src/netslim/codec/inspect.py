"""Rows for ``netslim inspect x.nsz``: where the bits of a Huffman-coded file go."""

from __future__ import annotations

import os

from .container import nsz_breakdown

HEADER = [
    "layer",
    "kind",
    "shape",
    "nonzero",
    "clusters",
    "weight bits",
    "index bits",
    "table bits",
    "codebook B",
    "record B",
    "bits/nz",
    "huffman saving",
]


def breakdown_table(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """(header, rows) per tensor, plus a total row; weight/index bits are Huffman payloads."""
    rows, total = [], {"w": 0, "i": 0, "t": 0, "cb": 0, "rec": 0, "nz": 0, "fixed": 0}
    for r in nsz_breakdown(path):
        coded = r["weight_bits"] + r["index_bits"] + r["weight_table_bits"] + r["index_table_bits"]
        per_nz = f"{(coded + 8 * r['codebook_bytes']) / r['nonzero']:.2f}" if r["nonzero"] else "-"
        saving = f"{100 * r['huffman_saving']:.1f} %" if r["kind"] != "raw" else "-"
        rows.append(
            [
                r["name"],
                r["kind"],
                "x".join(map(str, r["shape"])),
                f"{r['nonzero']:,}",
                str(r["clusters"] or "-"),
                f"{r['weight_bits']:,}",
                f"{r['index_bits']:,}",
                f"{r['weight_table_bits'] + r['index_table_bits']:,}",
                f"{r['codebook_bytes']:,}",
                f"{r['record_bytes']:,}",
                per_nz,
                saving,
            ]
        )
        for key, field in (
            ("w", "weight_bits"),
            ("i", "index_bits"),
            ("cb", "codebook_bytes"),
            ("rec", "record_bytes"),
            ("nz", "nonzero"),
            ("fixed", "fixed_bits"),
        ):
            total[key] += r[field]
        total["t"] += r["weight_table_bits"] + r["index_table_bits"]
    coded = total["w"] + total["i"] + total["t"]
    saving = f"{100 * (1 - (coded + 8 * total['cb']) / total['fixed']):.1f} %" if total["fixed"] else "-"
    rows.append(
        [
            "(total)",
            "",
            "",
            f"{total['nz']:,}",
            "",
            f"{total['w']:,}",
            f"{total['i']:,}",
            f"{total['t']:,}",
            f"{total['cb']:,}",
            f"{total['rec']:,} of {os.path.getsize(path):,} file",
            "",
            saving,
        ]
    )
    return HEADER, rows
