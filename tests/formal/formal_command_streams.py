"""Formal harness of the command processor's reply streams (hw/command.py): ``o_reply`` and
``o_data`` obey valid/ready."""

from gsaccel.hw.command import CommandProcessor

from formal_command import COMMAND_CFG, reply_lemma
from formal_framing import StreamHarness

__all__ = ["command_stream_harness"]


def command_stream_harness(cfg=COMMAND_CFG, **kwargs):
    """The rule on ``o_reply`` and ``o_data`` under the rule on ``i_frame``; the sequencer's
    ``o_group`` and ``o_row`` pass straight through and are checked on the sequencer alone
    (``formal_sequencer``), whose inputs are free there."""
    return StreamHarness(CommandProcessor(cfg), exempt=("o_group", "o_row"),
                         lemmas=reply_lemma, **kwargs)
