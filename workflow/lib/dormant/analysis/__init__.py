"""What is measured on a model (docs/methods.md sections 3, 6 and 8): ``metrics`` (C-ACC, ASR, RA, DER),
``cka`` (linear CKA), ``bec`` (the backdoor existence coefficient), ``adversarial`` (untargeted PGD) and
``observation`` (PBE's observation of where adversarial examples land)."""
