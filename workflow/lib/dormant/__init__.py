"""dormant: is a backdoor removed by a defense gone, or only dormant?

The package follows the data flow of the pipeline: ``data`` (datasets) -> ``attacks`` (triggers, poisoning)
-> ``training`` (clean and backdoored models on ``nets`` architectures) -> ``defenses`` -> ``analysis``
(metrics, CKA, BEC, PBE's observation) -> ``reactivation`` (white-box, query, transfer, evidence) ->
``report`` (tables, figures). ``stages`` is the seam to the Snakemake rules, one function per rule, and
``cli`` its command line.
"""

__version__ = "0.1.0"
