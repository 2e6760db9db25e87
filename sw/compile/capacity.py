"""What a compiled model needs of a core, against what the core has: one report of every
limit (DESIGN §2.2), which :class:`~gsaccel.sw.errors.CapacityError` carries and
``gsaccel compile --report`` prints.

The weight-side limits (group words, row words, layer-table entries) can be met by
*phases* — the runtime streams each phase's weights before its layers — when every single
layer fits; the scratchpad cannot: activations stay on chip.
"""

from dataclasses import dataclass, field

__all__ = ["Limit", "CapacityReport", "WEIGHT_LIMITS"]

#: The limits phases can meet (each phase loads its own weights, rows and layer table).
WEIGHT_LIMITS = ("weight_depth", "row_depth", "layer_depth")


@dataclass(frozen=True)
class Limit:
    """One memory of the core against the program.

    Attributes
    ----------
    what : str
        What is counted ("activation words per bank", "group words", ...).
    field : str
        The :class:`~gsaccel.hw.config.CoreConfig` field that sets the capacity.
    need, have : int
        What the program needs (the whole program: all phases together) and the core holds.
    largest : int
        The most any single layer (phase) needs: phases fit when it is at most ``have``.
    detail : str
        How the need arises (the live tensors at the peak, for activations).
    most : int
        The largest value ``field`` may take (:class:`~gsaccel.hw.config.CoreConfig`'s
        checks); beyond it only pruning or a smaller model helps.
    """

    what: str
    field: str
    need: int
    have: int
    largest: int = 0
    detail: str = ""
    most: int = 0

    @property
    def fits(self):
        return self.need <= self.have

    @property
    def fits_phased(self):
        return self.fits or (self.field in WEIGHT_LIMITS and self.largest <= self.have)


@dataclass
class CapacityReport:
    """Every limit of a core against one program.

    Attributes
    ----------
    limits : list of Limit
    problems : list of str
        Limits of single layers that no core size lifts (output sides, groups per pixel).
    """

    limits: list
    problems: list = field(default_factory=list)

    @property
    def fits(self):
        """The program fits in one load (no phases)."""
        return not self.problems and all(limit.fits for limit in self.limits)

    @property
    def fits_phased(self):
        """The program runs, in phases if need be."""
        return not self.problems and all(limit.fits_phased for limit in self.limits)

    @property
    def status(self):
        """``"fits"``, ``"phased"`` or ``"no"``."""
        return "fits" if self.fits else "phased" if self.fits_phased else "no"

    def limit(self, field_name):
        return next(limit for limit in self.limits if limit.field == field_name)

    def remedy(self, *, phases_allowed=True):
        """What to change, in one sentence (empty when it fits)."""
        if self.fits:
            return ""
        over = [limit for limit in self.limits if not limit.fits]
        if phases_allowed and self.fits_phased:
            return ("it runs in phases that stream the weights before their layers; for one "
                    "load, use a core with "
                    + ", ".join(f"{limit.field}={_next_pow2(limit.need)}" for limit in over))
        remedies = []
        bigger = [limit for limit in over if _next_pow2(limit.need) <= limit.most]
        if bigger:
            remedies.append("use a core with " + ", ".join(
                f"{limit.field}={_next_pow2(limit.need)}" for limit in bigger)
                + " (a CoreConfig, or a board with more memory)")
        if any(limit.field in ("weight_depth", "row_depth") for limit in over):
            remedies.append("prune harder")
        if not phases_allowed and self.fits_phased:
            remedies.append("allow phases (compile with phases=True)")
        if any(limit.field == "bank_depth" for limit in over):
            remedies.append("use a smaller input or more lanes")
        return " or ".join(remedies)

    def lines(self, *, phases_allowed=True):
        """One line per limit: what, need, have, and whether it fits ("ok"), fits in phases
        ("phased") or does not ("OVER")."""
        rows = []
        for limit in self.limits:
            mark = ("ok" if limit.fits else
                    "phased" if phases_allowed and limit.fits_phased else "OVER")
            largest = (f" (largest layer {limit.largest})"
                       if limit.field in WEIGHT_LIMITS and not limit.fits else "")
            detail = f" — {limit.detail}" if limit.detail and not limit.fits else ""
            rows.append(f"{limit.what}: {limit.need} of {limit.have} "
                        f"(CoreConfig.{limit.field}){largest} {mark}{detail}")
        return rows + self.problems

    def __str__(self):
        return "\n".join(self.lines())

    def message(self, *, phases_allowed=True):
        """The one-paragraph CapacityError text: every limit exceeded, then the remedy."""
        over = [line for limit, line in zip(self.limits,
                                            self.lines(phases_allowed=phases_allowed))
                if not limit.fits]
        text = "; ".join(over + self.problems)
        remedy = self.remedy(phases_allowed=phases_allowed)
        return f"Program does not fit the core: {text}." + (f" To fit it, {remedy}."
                                                             if remedy else "")


def _next_pow2(n):
    return 1 << max(int(n) - 1, 0).bit_length()
