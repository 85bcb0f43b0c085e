"""Re-activation attacks and the evidence that they restore the original backdoor (docs/methods.md
section 7): ``delta`` (what every attack shares: budgets, projection, loss, optimiser, attacker's images),
``whitebox``, ``query`` (scores only), ``transfer`` (the attacker's surrogates), ``evidence`` (CKA, queries,
noise)."""
