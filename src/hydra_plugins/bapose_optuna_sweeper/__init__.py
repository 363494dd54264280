"""bapose's Optuna sweeper for Hydra (``hydra/sweeper=optuna``, ``conf/hydra/sweeper/optuna.yaml``).

``hydra_plugins`` is a namespace package: Hydra imports every public module under it when it starts and registers
the sweepers and launchers it finds. :mod:`.optuna_sweeper` imports nothing heavy; Optuna is imported only when the
sweeper is used (``_impl``, which Hydra's scan skips for its leading underscore).
"""
