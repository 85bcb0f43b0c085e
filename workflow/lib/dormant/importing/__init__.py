"""Models trained elsewhere (issue 18): a foreign checkpoint -> this project's safetensors model + sidecar.

Two formats (docs/operations.md, "Models trained elsewhere"):

- ``backdoorbench``: a BackdoorBench record, ``attack_result.pt`` (a dict with ``model_name``,
  ``num_classes``, ``model`` = the state dict, ``img_size``, ``data_path``, ...) or
  ``defense/<name>/defense_result.pt`` (a dict with at least ``model``);
- ``state_dict``: a plain ``torch.save(model.state_dict())`` of one of this project's architectures, in this
  project's parameter names or (PreActResNet family) in BackdoorBench's.

Files are read with ``torch.load(weights_only=True)`` only (:mod:`dormant.importing.safeload`); names are
mapped exactly (:mod:`dormant.importing.layouts`), every shape checked, and any missing or unused key is an
error naming it. :func:`dormant.importing.convert.export_record` writes the inverse (a BackdoorBench-layout
record), for the round trip.

The code is in submodules (``convert``, ``layouts``, ``safeload``, ``cli``) and this file imports none of them,
so that the config check, which reads :mod:`dormant.importing.layouts`, does not make every stage depend on
the converter.
"""
