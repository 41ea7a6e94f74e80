"""``federation archive-legacy``: the phase 4 clean-up."""

from __future__ import annotations

from federation import config

import tarfile

from federation.stores.files import Tree, has_legacy_data
from federation.domain.generate import generate
from federation.transfer.migrate import migrate

from _transfer_helpers import cli, dirs_of, snapshot


def _legacy(root):
    return {k: v for k, v in snapshot(root).items() if k.startswith(("nodes/", "shared/"))}


def test_archive_refuses_when_the_report_is_inconsistent(fed, tmp_path):
    """An inconsistent report: exit 1, no archive written, every legacy file left in place."""
    generate(fed.root, agents=3, messages=10)
    assert migrate(settings=config.settings()).exit_code == 0
    (fed.root / "nodes" / "agent-001" / "inbox" / "msg-0000001.json").unlink()
    before = _legacy(fed.root)
    dest = tmp_path / "legacy.tar.gz"
    proc = cli(fed, "archive-legacy", "--to", str(dest))
    assert proc.returncode == 1
    assert "differ" in proc.stderr and "messages: 0 missing in db, 1 missing in files" in proc.stderr
    assert not dest.exists() and not list(tmp_path.glob(".legacy.tar.gz*"))
    assert _legacy(fed.root) == before


def test_archive_of_a_consistent_tree_restores_it_exactly_and_removes_the_files(fed, tmp_path):
    """On a consistent report: a verified archive that extracts to the identical tree (paths, bytes, modes,
    empty inboxes); the legacy files are gone afterwards and phase 4 keeps serving the database."""
    generate(fed.root, agents=5, messages=30, malformed=True)
    assert migrate(settings=config.settings()).exit_code == 3  # malformed files are archived too: nothing is lost
    (fed.root / "nodes" / "agent-004" / "inbox" / "extra").mkdir()
    before, before_dirs = _legacy(fed.root), {d for d in dirs_of(fed.root) if d.startswith(("nodes", "shared"))}
    dest = tmp_path / "legacy.tar.gz"
    proc = cli(fed, "archive-legacy", "--to", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert f"archived {len(before)} files" in proc.stdout
    assert not has_legacy_data(Tree(fed.root))
    assert not (fed.root / "nodes").exists() and not (fed.root / "shared").exists()

    restored = tmp_path / "restored"
    with tarfile.open(dest) as tar:
        if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4 / 3.12: say which filter, as the docs ask
            tar.extractall(restored, filter="tar")
        else:
            tar.extractall(restored)
    assert _legacy(restored) == before
    assert {d for d in dirs_of(restored) if d != "."} == before_dirs

    from federation import messaging

    fed.phase(4)
    assert len(messaging.peek_inbox("agent-001")) == 6


def test_archive_refuses_to_overwrite_an_existing_file(fed, tmp_path):
    """An existing archive name is refused (exit 1) and the legacy files stay."""
    generate(fed.root, agents=2, messages=2)
    assert migrate(settings=config.settings()).exit_code == 0
    dest = tmp_path / "legacy.tar.gz"
    dest.write_bytes(b"keep me")
    proc = cli(fed, "archive-legacy", "--to", str(dest))
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert dest.read_bytes() == b"keep me"
    assert has_legacy_data(Tree(fed.root))
