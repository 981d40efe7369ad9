"""Human names of the legal basis codes (vocab.LEGAL_BASES), for reports, the CLI and the demo.

A code is what the policy and the exchange log record; the label is what an information governance
officer reads next to it. Every code in LEGAL_BASES has a label (a test keeps it so).
"""
from __future__ import annotations

LEGAL_BASIS_LABELS: dict[str, str] = {
    "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18": (
        "UK GDPR Art. 6(1)(e) public task + Art. 9(2)(g) substantial public interest, "
        "DPA 2018 Sch. 1 para 18 safeguarding"
    ),
    "CRIME_AND_DISORDER_ACT_1998_S115": "Crime and Disorder Act 1998 s115 disclosure for crime and disorder reduction",
    "CHILDREN_ACT_2004": "Children Act 2004 ss10-11 cooperation and duty to safeguard children",
    "DPA_2018_PART_3": "DPA 2018 Part 3 law enforcement processing",
}


def legal_basis_label(code: str | None) -> str:
    """The human name of a legal basis code; "" for no code, the code itself for one this version
    does not know (a log outlives its policies, so an older or newer code must still show)."""
    if not code:
        return ""
    return LEGAL_BASIS_LABELS.get(code, code)
