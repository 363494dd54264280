"""The ``${bapose.*}`` OmegaConf resolvers of ``conf/`` (registered on import, idempotent), and how a run uses W&B.

* ``${bapose.wandb_offline:}`` — ``False`` when ``WANDB_MODE=online`` or W&B's own credential lookup finds a key
  (``wandb.login(verify=False, prompt=False)``: ``WANDB_API_KEY``, W&B's settings file, ``~/.netrc``, where
  ``wandb login`` stores it); ``True`` otherwise, and whenever ``WANDB_MODE`` is ``offline`` / ``dryrun`` /
  ``disabled`` (``disabled``: no W&B run at all, see :func:`wandb_mode`). Runs never block on a network that is not
  there.
* ``${bapose.run_group:}``, ``${bapose.run_name:}``, ``${bapose.run_id:<run_id>,<runs folder>}``,
  ``${bapose.rank_suffix:}``, ``${bapose.on_rank_zero:x}`` — :mod:`bapose.utils.naming`.
* ``${bapose.root_dir:}`` — where runs and data live (:func:`bapose.paths.default_root_dir`).
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from bapose.paths import default_root_dir
from bapose.utils.naming import on_rank_zero, rank_suffix, run_folder_name, run_group, run_name

__all__ = ["register_resolvers", "wandb_mode", "wandb_offline"]


def wandb_mode() -> str:
    """How this run uses W&B: ``"disabled"`` (``WANDB_MODE=disabled``: no W&B run, no ``wandb/`` folder),
    ``"offline"`` (``WANDB_MODE=offline|dryrun``, or no credentials), or ``"online"`` (``WANDB_MODE=online``, or W&B's
    own credential lookup finds a key).

    Raises:
        ConfigError: W&B found credentials it rejects (e.g. a truncated key in ``~/.netrc``).
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return "disabled"
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode:  # online, shared, run
        return "online"
    return "online" if _wandb_has_credentials() else "offline"


def _wandb_has_credentials() -> bool:
    """W&B's own lookup (the order ``wandb.init`` uses), without a prompt and without asking the server."""
    import wandb
    from wandb.errors import AuthenticationError

    from bapose.errors import ConfigError

    try:
        return bool(wandb.login(verify=False, prompt=False))
    except AuthenticationError as err:
        raise ConfigError(f"W&B credentials: {err}; expected a valid API key (`wandb login --relogin`), or "
                          f"WANDB_MODE=offline to log offline") from None


def wandb_offline() -> bool:
    """Whether W&B should log offline (see module docstring; ``disabled`` counts as offline here: the logger factory
    ``bapose.utils.wandb.wandb_logger`` builds no logger at all then)."""
    return wandb_mode() != "online"


def register_resolvers() -> None:
    """Register the ``bapose.*`` OmegaConf resolvers (idempotent)."""
    for name, fn in (("bapose.wandb_offline", wandb_offline), ("bapose.run_group", run_group),
                     ("bapose.run_name", run_name), ("bapose.run_id", run_folder_name),
                     ("bapose.rank_suffix", rank_suffix), ("bapose.on_rank_zero", on_rank_zero),
                     ("bapose.root_dir", default_root_dir)):
        if not OmegaConf.has_resolver(name):
            # run_id and root_dir: resolved once per process (hydra.run.dir is read several times while Hydra sets up
            # a run; a wheel install's root is the folder the command started in, whatever it changes to later)
            OmegaConf.register_new_resolver(name, fn, use_cache=name in ("bapose.run_id", "bapose.root_dir"))


register_resolvers()
