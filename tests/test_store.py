"""The ``Store`` protocol against the two stores that implement it and the shim's spec.

The shim routes a call by name (``core.save_vote`` -> ``SqlStore.save_vote``): the file store
(``federation.core``), the SQL store and the protocol must name the same operations with the
same parameters, defaults and annotations.  This is the one test of that.
"""

from __future__ import annotations

import inspect

from federation import core
from federation.stores.sqlstore import SqlStore
from federation.stores.protocol import Store


def protocol_operations() -> list[str]:
    # the protocol is written by entity group (one Protocol each, Store combining them): every group's methods
    return sorted({name for klass in Store.__mro__ if klass.__module__ == Store.__module__
                   for name, value in vars(klass).items() if inspect.isfunction(value) and not name.startswith("_")})


def signature_mismatches(implementation, operations) -> list[str]:
    """Each of *operations* that *implementation* (a module or a class) lacks, or has with another
    signature than the ``Store`` protocol's."""
    out = []
    label = getattr(implementation, "__name__", repr(implementation))
    for name in operations:
        found = getattr(implementation, name, None)
        if found is None:
            out.append(f"{name}: missing on {label}")
            continue
        want = inspect.signature(getattr(Store, name))
        have = inspect.signature(inspect.unwrap(found))
        if inspect.isclass(implementation) or inspect.ismethod(found):  # compare without self
            have = have.replace(parameters=list(have.parameters.values())[1:])
        want = want.replace(parameters=list(want.parameters.values())[1:])
        if have != want:
            out.append(f"{name}: {label}{have} != Store{want}")
    return out


def test_every_shimmed_function_has_a_store_method_with_the_same_signature():
    """SHIM_SPEC, the protocol, the file store and the SQL store name the same operations, alike."""
    assert protocol_operations() == sorted(core.SHIM_SPEC)
    assert signature_mismatches(core, protocol_operations()) == []
    assert signature_mismatches(SqlStore, protocol_operations()) == []


def test_a_signature_mismatch_is_found():
    """The check fails on a missing method, a renamed parameter and a changed default."""

    class Bad:
        def load_inbox(self, who: str) -> list[dict]: ...
        def load_history(self, agent: str | None = None, limit: int = 10,
                         before: tuple[str, str] | None = None) -> list[dict]: ...

    found = signature_mismatches(Bad, ["load_inbox", "load_history", "save_vote"])
    assert [f.split(":")[0] for f in found] == ["load_inbox", "load_history", "save_vote"]
