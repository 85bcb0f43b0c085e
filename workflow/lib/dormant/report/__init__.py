"""Paper-style tables and figures, one module per report family: ``table`` (the main table, BEC-vs-ASR,
re-activation, trigger gallery, histories, PBE's observation and rounds), ``blackbox`` (query, transfer and
evidence), ``defenses`` (the attack x defense grid); ``common`` holds what they share."""

import matplotlib

matplotlib.use("Agg")  # before any pyplot import: figures render off-screen, identically on every machine
