"""A C2SP tlog-witness for the exchange log (docs/audit.md, "Witnesses"): verifies each new
checkpoint against the last one it cosigned with a consistency proof, cosigns it (C2SP
tlog-cosignature, cosignature/v1), refuses rollbacks and forks and keeps the evidence.

    state.py     the witness's persistent state (per log origin) and its evidence of misbehaviour
    service.py   add-checkpoint as a pure-ish function over the state (no HTTP)
    protocol.py  the add-checkpoint request body, shared with the log's client
    http.py      the HTTP service (aiohttp) and the log's client
"""
