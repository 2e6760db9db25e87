"""The base of the core's blocks: a ``wiring.Component`` built for one :class:`CoreConfig`."""

from amaranth.lib import wiring

from .config import check_config

__all__ = ["CoreComponent"]


class CoreComponent(wiring.Component):
    """A block whose interface is a function of the core's configuration.

    A subclass defines :meth:`members` (its signature's members for a configuration) and,
    if it has rules of its own, extends :meth:`check`; the configuration is checked before
    any member is built.

    Parameters
    ----------
    cfg : CoreConfig

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    """

    def __init__(self, cfg):
        self._cfg = self.check(cfg)
        super().__init__(self.members(self._cfg))

    def check(self, cfg):
        """``cfg``, checked; raises ``TypeError`` or ``ValueError`` if the block cannot be
        built for it."""
        return check_config(cfg)

    def members(self, cfg):
        """The signature's members for ``cfg`` (every block defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define members(cfg)")

    @property
    def cfg(self):
        return self._cfg
