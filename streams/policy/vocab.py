"""Closed vocabularies a policy file may use (areas, agency kinds, legal bases, key statuses)."""
from __future__ import annotations

# The areas West Mercia Police serves; the `area` of every case event is one of these.
AREAS: tuple[str, ...] = ("herefordshire", "shropshire", "telford_and_wrekin", "worcestershire")

AGENCY_KINDS: tuple[str, ...] = ("health", "housing", "childrens_services", "education", "idva", "probation")

# Legal basis codes recorded on every share, with the statute they stand for (shown by `explain`).
LEGAL_BASES: dict[str, str] = {
    "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18": (
        "UK GDPR Art. 6(1)(e) + Art. 9(2)(g); DPA 2018 Sch. 1 para 18 (safeguarding of children and individuals at risk)"
    ),
    "CRIME_AND_DISORDER_ACT_1998_S115": "Crime and Disorder Act 1998 s115 (disclosure for crime reduction)",
    "CHILDREN_ACT_2004": "Children Act 2004 ss10-11 (duty to cooperate and to safeguard children)",
    "DPA_2018_PART_3": "Data Protection Act 2018 Part 3 (law enforcement processing)",
}

# active: receives new data / signatures trusted; retired: nothing new, old data still readable by the
# holder and old signatures still verify; revoked: nothing new and signatures no longer trusted.
KEY_STATUSES: tuple[str, ...] = ("active", "retired", "revoked")

# The deadline word for Operation Encompass ("before the next school day").
NEXT_SCHOOL_DAY = "next_school_day"
