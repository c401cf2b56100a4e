"""The machine report: every member and its models, and the GPU processes that are not members."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ...devices import gpu_processes
from ...reports import KernelRow, MachineModel, MachineReport
from ...reports.machine import borrower_names
from .publishing import Identity
from .rows import CopyRow, MemberRow, ModelRow

__all__ = ["machine_report"]


def machine_report(me: Identity, own: list[MachineModel], members: list[MemberRow], rows: list[ModelRow], *,
                   ledger: str, reason: str, copies: Sequence[CopyRow] = ()) -> MachineReport:
    """The report: this member's models from ``own`` (fresh), the others' from the ledger's rows.

    ``ledger`` is the file ("" when this manager does not cooperate), ``reason`` why it does not; ``copies``
    say who borrows the others' models.
    """
    names = {m.member: m for m in members}
    lent = {(c.member, c.key): c for c in copies}
    models = [replace(m, member=me.member) for m in own] + [
        MachineModel(names[r.member].pid, names[r.member].notebook, r.model_id, r.device, r.bytes, r.state,
                     r.pinned, r.leases, r.last_used, False, r.member, *_lent(lent.get((r.member, r.key))))
        for r in rows if r.member in names and r.member != me.member]
    kernels = [KernelRow(me.pid, me.notebook, me.kernel, me.member, True, len(own), sum(m.bytes for m in own))]
    for member in members:
        if member.member != me.member:
            theirs = [r for r in rows if r.member == member.member]
            kernels.append(KernelRow(member.pid, member.notebook, member.kernel, member.member, False,
                                     len({r.key for r in theirs}), sum(r.bytes for r in theirs)))
    pids = {k.pid for k in kernels}
    others = tuple(p for p in gpu_processes() if p.pid not in pids)
    return MachineReport(tuple(kernels), tuple(models), others, bool(ledger), ledger, reason)


def _lent(copy: CopyRow | None) -> tuple[tuple[str, ...], str]:
    """Who borrows a copy and its share key (nobody, "" when it is not lent)."""
    return ((), "") if copy is None else (borrower_names(copy.borrowers), copy.share)
